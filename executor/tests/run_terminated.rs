//! A scheduled run that systemd stops (the policy's `maxRuntime` elapsed, or the host shuts
//! down) gets SIGTERM. It must still leave a run record saying so: without one the operator
//! only sees the previous run's record, and a hung job looks like a host that went quiet.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn config(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("creds")).unwrap();
    std::fs::write(dir.join("creds/repository-password"), b"pw\n").unwrap();
    let v = serde_json::json!({
        "format": 1, "policy": "nightly", "kind": "backup",
        "repository": dir.join("repo").to_str().unwrap(),
        "paths": [],
        "excludes": [], "exclude_caches": false, "one_file_system": false,
        // A dump that never ends: the job is still running when it is stopped.
        "stdin": [{"name": "hung", "command": ["sleep", "600"], "filename": "dump.sql"}],
        "tags": [], "host": "web-1", "extra_args": [],
        "credentials": {"repository_password": "repository-password"},
        "run_record_dir": dir.join("runs").to_str().unwrap(),
        "cache_dir": dir.join("cache").to_str().unwrap(),
    });
    let path = dir.join("backup.json");
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    path
}

fn records(dir: &Path) -> Vec<serde_json::Value> {
    let Ok(rd) = std::fs::read_dir(dir.join("runs")) else {
        return Vec::new();
    };
    let mut names: Vec<_> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

#[test]
fn a_run_stopped_with_sigterm_records_why_and_exits_promptly() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetsnap"))
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("CREDENTIALS_DIRECTORY", tmp.path().join("creds"))
        .stdout(Stdio::null())
        // A file, not a pipe: the dump command inherits it and outlives a killed job.
        .stderr(std::fs::File::create(tmp.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    // Stop it once the dump command runs, i.e. the job is really under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    let sleeper = loop {
        if tmp.path().join("repo/config").exists()
            && let Some(pid) = sleeper(child.id())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the job did not start its dump");
        assert!(child.try_wait().unwrap().is_none(), "the job ended early");
        std::thread::sleep(Duration::from_millis(20));
    };
    let stopped = Instant::now();
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    while child.try_wait().unwrap().is_none() {
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait().unwrap();
    // systemd would stop the whole unit; here the dump is ours to end.
    unsafe { libc::kill(sleeper, libc::SIGKILL) };
    let stderr = std::fs::read_to_string(tmp.path().join("stderr")).unwrap();
    let recs = records(tmp.path());
    assert_eq!(
        recs.len(),
        1,
        "one run record for the stopped run ({status}); stderr: {stderr}"
    );
    let rec = &recs[0];
    assert_ne!(rec["exit_code"], 0, "{rec}");
    let error = rec["error"].as_str().unwrap_or_default();
    assert!(error.contains("SIGTERM"), "the record says why: {rec}");
    assert!(rec["snapshot_id"].is_null(), "{rec}");
}

/// The `sleep` child of `pid` (the job's dump command), once it runs.
fn sleeper(pid: u32) -> Option<libc::pid_t> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<libc::pid_t>>()
        })
        .find(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == "sleep")
        })
}
