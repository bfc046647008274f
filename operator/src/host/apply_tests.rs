use std::sync::Mutex;

use super::*;
use crate::host::model::{Credentials, ExecutorArtifact, PolicyKind, PolicySpec, SecretBytes};
use crate::host::shell::{Capture, CommandOutput, StdoutLimit};

const PASSWORD: &str = "apply-test-password-9f3";

/// Records every call; answers by the first matching rule (substring of the joined argv).
struct FakeShell {
    calls: Mutex<Vec<(Vec<String>, Vec<u8>)>>,
    rules: Vec<(&'static str, CommandOutput)>,
}

impl FakeShell {
    fn new(rules: Vec<(&'static str, CommandOutput)>) -> Self {
        Self {
            calls: Mutex::new(Vec::new()),
            rules,
        }
    }

    fn calls(&self) -> Vec<(Vec<String>, Vec<u8>)> {
        self.calls.lock().unwrap().clone()
    }
}

fn ok(stdout: &str) -> CommandOutput {
    CommandOutput {
        code: Some(0),
        stdout: stdout.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn fail(code: i32, stdout: &str, stderr: &str) -> CommandOutput {
    CommandOutput {
        code: Some(code),
        stdout: stdout.as_bytes().to_vec(),
        stderr: stderr.as_bytes().to_vec(),
        ..Default::default()
    }
}

impl HostShell for FakeShell {
    fn host_name(&self) -> &str {
        "fake"
    }

    async fn run_limited(
        &self,
        argv: &[&str],
        stdin: &[u8],
        limit: StdoutLimit,
    ) -> Result<CommandOutput, HostError> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let joined = argv.join(" ");
        self.calls.lock().unwrap().push((argv, stdin.to_vec()));
        let full = self
            .rules
            .iter()
            .find(|(pat, _)| joined.contains(pat))
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| ok(""));
        // The same bounded capture as the SSH transport, fed in 64 KiB reads.
        let (mut out, mut err) = (Capture::new(limit), Capture::stderr());
        let overflow = !full.stdout.chunks(64 << 10).all(|c| out.push(c));
        full.stderr.chunks(64 << 10).for_each(|c| {
            err.push(c);
        });
        let (stdout, stdout_truncated) = out.finish();
        Ok(CommandOutput {
            code: if overflow { None } else { full.code },
            stdout,
            stderr: err.finish().0,
            stdout_truncated,
        })
    }
}

fn inputs_fixture(
    dir: &std::path::Path,
    binary: &[u8],
) -> (ExecutorArtifact, PolicySpec, Credentials) {
    let local = dir.join("fleetsnap");
    std::fs::write(&local, binary).unwrap();
    let artifact = ExecutorArtifact {
        version: "0.1.0".into(),
        sha256: plan::sha256_hex(binary),
        local_path: local,
    };
    let policy = PolicySpec {
        name: "nightly".into(),
        kind: PolicyKind::Backup,
        repository: "local:/srv/repo".into(),
        paths: vec!["/etc".into()],
        excludes: vec![],
        exclude_caches: false,
        one_file_system: false,
        stdin_sources: vec![],
        tags: vec![],
        host_tag: "h".into(),
        on_calendar: "daily".into(),
        randomized_delay_sec: 0,
        persistent: true,
        nice: None,
        io_scheduling_class: None,
        io_scheduling_priority: None,
        cpu_quota_percent: None,
        max_runtime_sec: Some(3600),
        lock_wait_sec: 1800,
        extra_args: vec![],
        credential_process: vec![],
    };
    let creds = Credentials {
        repository_password: SecretBytes::new(PASSWORD),
        aws: None,
        rest: None,
        expires: None,
    };
    (artifact, policy, creds)
}

const FACTS_FRESH: &str = "sys\tarch\tx86_64\nsys\tkernel\t6.1\nsys\tsystemd\tsystemd 252\nsys\tlibc\tglibc 2.36\nsys\tcreds\tencrypt\n";

#[tokio::test]
async fn fresh_install_sends_secrets_only_on_stdin() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, p, c) = inputs_fixture(tmp.path(), b"#!/bin/sh\necho hi\n");
    let sh = FakeShell::new(vec![
        ("sys\tarch", ok("")),
        ("set -u\nprintf", ok(FACTS_FRESH)),
    ]);
    let inputs = JobInputs {
        artifact: &a,
        policy: &p,
        credentials: &c,
    };
    let (plan, report) = reconcile_job(&sh, &inputs).await.unwrap();
    assert_eq!(report.actions.len(), plan.actions.len());
    let calls = sh.calls();
    for (argv, _) in &calls {
        assert!(
            !argv.join(" ").contains(PASSWORD),
            "secret in argv {argv:?}"
        );
    }
    // The password went on stdin to the encrypting write into the encrypted credstore.
    let (argv, stdin) = calls
        .iter()
        .find(|(_, stdin)| stdin == PASSWORD.as_bytes())
        .expect("password written");
    assert!(argv.iter().any(|a| a == "repository-password"), "{argv:?}");
    assert!(
        argv.iter()
            .any(|a| a.starts_with("/etc/fleetsnap/credstore.encrypted/"))
    );
    assert_eq!(stdin, PASSWORD.as_bytes());
    // Units are verified before being moved into place and before daemon-reload.
    let pos = |needle: &str| {
        calls
            .iter()
            .position(|(a, _)| a.join(" ").contains(needle))
            .unwrap()
    };
    let moved = calls
        .iter()
        .position(|(a, _)| a.iter().any(|x| x == "/etc/systemd/system"))
        .unwrap();
    assert!(pos("systemd-analyze verify") < moved);
    assert!(pos("systemd-analyze verify") < pos("daemon-reload"));
    assert!(pos("daemon-reload") < pos("enable --now"));
}

/// A key rotation replaces the key id, the secret and the token together: a unit starting
/// (or anyone reading) between two of the writes would get a key id with another key's
/// token, which S3 refuses. All credential files are staged first and put in place by one
/// command.
#[tokio::test]
async fn credential_files_are_put_in_place_by_one_command() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, mut p, mut c) = inputs_fixture(tmp.path(), b"#!/bin/sh\necho hi\n");
    p.repository = "s3:https://s3.example/b/h".into();
    c.aws = Some(crate::host::model::AwsCredentials {
        access_key_id: SecretBytes::new("AKIDNEW"),
        secret_access_key: SecretBytes::new("secret-new"),
        session_token: Some(SecretBytes::new("token-new")),
    });
    let sh = FakeShell::new(vec![("set -u\nprintf", ok(FACTS_FRESH))]);
    let inputs = JobInputs {
        artifact: &a,
        policy: &p,
        credentials: &c,
    };
    reconcile_job(&sh, &inputs).await.unwrap();
    let calls = sh.calls();
    // Commands that leave a credential file at its final path: a write that renames into
    // place, or the command that promotes staged files.
    let finals: Vec<String> = calls
        .iter()
        .filter(|(argv, _)| {
            let script = argv.get(2).map(String::as_str).unwrap_or_default();
            let credential = argv
                .iter()
                .skip(3)
                .any(|a| a.starts_with("/etc/fleetsnap/credstore"));
            let renames_into_place =
                script == WRITE_FILE && argv.last().is_none_or(|a| a != "stage");
            credential && (renames_into_place || script.contains("promote staged files"))
        })
        .map(|(argv, _)| argv.join(" "))
        .collect();
    assert_eq!(
        finals.len(),
        1,
        "credential files were put in place by {} commands: {finals:#?}",
        finals.len()
    );
    for id in [
        "repository-password",
        "aws-access-key-id",
        "aws-secret-access-key",
        "aws-session-token",
    ] {
        assert!(finals[0].contains(id), "{id} not in the promoting command");
    }
}

#[tokio::test]
async fn verify_failure_installs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, p, c) = inputs_fixture(tmp.path(), b"bin");
    let sh = FakeShell::new(vec![
        ("set -u\nprintf", ok(FACTS_FRESH)),
        (
            "systemd-analyze verify",
            fail(1, "", "Failed to parse calendar specification"),
        ),
    ]);
    let inputs = JobInputs {
        artifact: &a,
        policy: &p,
        credentials: &c,
    };
    let err = reconcile_job(&sh, &inputs).await.unwrap_err();
    assert!(matches!(err, HostError::VerifyFailed { .. }), "{err}");
    assert!(err.to_string().contains("calendar"));
    let calls = sh.calls();
    assert!(
        !calls
            .iter()
            .any(|(a, _)| a.join(" ").contains("daemon-reload"))
    );
    assert!(
        !calls
            .iter()
            .any(|(a, _)| a.iter().any(|x| x == "/etc/systemd/system"))
    );
}

#[tokio::test]
async fn remote_checksum_mismatch_is_classified() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, p, c) = inputs_fixture(tmp.path(), b"bin");
    let sh = FakeShell::new(vec![
        ("set -u\nprintf", ok(FACTS_FRESH)),
        (".fleetsnap.upload", fail(86, "deadbeef\n", "")),
    ]);
    let inputs = JobInputs {
        artifact: &a,
        policy: &p,
        credentials: &c,
    };
    let err = reconcile_job(&sh, &inputs).await.unwrap_err();
    match err {
        HostError::ChecksumMismatch { actual, .. } => assert_eq!(actual, "deadbeef"),
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn corrupt_local_artifact_is_never_uploaded() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, p, c) = inputs_fixture(tmp.path(), b"bin");
    a.sha256 = plan::sha256_hex(b"something else");
    let sh = FakeShell::new(vec![("set -u\nprintf", ok(FACTS_FRESH))]);
    let inputs = JobInputs {
        artifact: &a,
        policy: &p,
        credentials: &c,
    };
    let err = reconcile_job(&sh, &inputs).await.unwrap_err();
    assert!(matches!(err, HostError::ChecksumMismatch { .. }));
    assert!(!sh.calls().iter().any(|(_, stdin)| stdin == b"bin"));
}

#[tokio::test]
async fn failing_command_reports_label_and_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, p, c) = inputs_fixture(tmp.path(), b"bin");
    let sh = FakeShell::new(vec![
        ("set -u\nprintf", ok(FACTS_FRESH)),
        (
            "mkdir -p",
            fail(
                1,
                "",
                "mkdir: cannot create directory: Read-only file system",
            ),
        ),
    ]);
    let inputs = JobInputs {
        artifact: &a,
        policy: &p,
        credentials: &c,
    };
    let err = reconcile_job(&sh, &inputs).await.unwrap_err();
    match &err {
        HostError::CommandFailed {
            cmd,
            code,
            stderr_tail,
            ..
        } => {
            assert_eq!(cmd, "create directory");
            assert_eq!(*code, Some(1));
            assert!(stderr_tail.contains("Read-only"));
        }
        other => panic!("{other}"),
    }
    assert!(err.is_transient());
}

#[tokio::test]
async fn noop_plan_runs_nothing() {
    let sh = FakeShell::new(vec![]);
    let plan = HostPlan {
        job: JobId::new(PolicyKind::Backup, "x").unwrap(),
        desired: None,
        actions: vec![],
    };
    let report = apply_plan(&sh, &plan).await.unwrap();
    assert!(!report.changed());
    assert!(sh.calls().is_empty());
}

/// A host that answers a command with more output than the operator reads (here 40 MiB for
/// the run records) gets a clear per-host error instead of having all of it buffered.
#[tokio::test]
async fn observe_refuses_output_over_the_cap() {
    let flood = CommandOutput {
        code: Some(0),
        stdout: vec![b'x'; 40 << 20],
        ..Default::default()
    };
    let sh = FakeShell::new(vec![("json$", flood)]);
    let job = JobId::new(PolicyKind::Backup, "nightly").unwrap();
    let e = crate::host::observe::observe_job(&sh, &job, 50)
        .await
        .expect_err("40 MiB of run records must be refused");
    assert!(e.to_string().contains("more than"), "{e}");
    assert_eq!(e.reason(), "HostOutputTooLarge");
}
