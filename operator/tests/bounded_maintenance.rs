//! Operator-side maintenance against repositories a compromised host has written zstd bombs
//! into (a lock and a snapshot that decompress to 1 GiB each): the run fails with an error
//! naming the file, and the operator process survives — proven in a child process whose
//! address space is limited to 512 MiB (the chart's memory limit), where decompressing
//! either bomb would abort the process.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use fleetsnap::backend::{Backend, FileType, LocalBackend};
use fleetsnap::id::Id;
use fleetsnap::repo::Repository;
use fleetsnap_crds::common::KeepRules;
use fleetsnap_crds::retention_policy::PruneOptions;
use fleetsnap_operator::controller::maintenance::{self, MaintenanceJob};
use fleetsnap_operator::host::model::SecretBytes;

const PASSWORD: &[u8] = b"bounded-maintenance-pw";
const CHILD_ENV: &str = "FLEETSNAP_BOUNDS_CHILD_REPOS";

/// `[2]` + zstd of `n` zero bytes (v2 framing), streamed: ~40 KB for 1 GiB.
fn zstd_bomb(n: u64) -> Vec<u8> {
    let mut enc = zstd::stream::Encoder::new(vec![2u8], 3).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..n / chunk.len() as u64 {
        enc.write_all(&chunk).unwrap();
    }
    enc.finish().unwrap()
}

/// A fresh repository with one bomb of type `t`, sealed with the repository key (which
/// every host writing to the repository has). Returns the planted file's name.
fn repo_with_bomb(dir: &Path, t: FileType) -> String {
    let be = Arc::new(LocalBackend::new(dir.to_path_buf()));
    let r = Repository::init(be.clone(), PASSWORD).unwrap();
    let sealed = r.key().seal(&zstd_bomb(1 << 30));
    let name = Id::hash(&sealed).to_hex();
    be.write(t, &name, &sealed).unwrap();
    name
}

fn job(dir: &Path) -> MaintenanceJob {
    MaintenanceJob {
        repository: format!("local:{}", dir.display()),
        password: SecretBytes::new(PASSWORD),
        keys: Default::default(),
        keep: KeepRules {
            last: Some(1),
            ..Default::default()
        },
        prune: PruneOptions::default(),
        trust: Some(fleetsnap::snapshot_times::Tolerance::default()),
    }
}

/// Runs maintenance on each repository and prints one line per result.
fn run_all(dirs: &[&Path]) -> Vec<String> {
    dirs.iter()
        .map(|d| match maintenance::run_blocking(&job(d)) {
            Ok(r) => format!("ok {r:?}"),
            Err(e) => format!("error {}", e.message),
        })
        .collect()
}

#[test]
fn maintenance_fails_on_bombs_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (lock_dir, snap_dir) = (tmp.path().join("lock"), tmp.path().join("snap"));
    let lock = repo_with_bomb(&lock_dir, FileType::Lock);
    let snap = repo_with_bomb(&snap_dir, FileType::Snapshot);
    let t = std::time::Instant::now();
    let out = run_all(&[&lock_dir, &snap_dir]);
    eprintln!(
        "maintenance on two bombed repositories: {:?}: {out:?}",
        t.elapsed()
    );
    assert!(
        out[0].starts_with("error ") && out[0].contains(&lock[..8]),
        "{}",
        out[0]
    );
    assert!(
        out[1].starts_with("error ") && out[1].contains(&snap[..8]),
        "{}",
        out[1]
    );
    for o in &out {
        assert!(o.contains("larger than"), "{o}");
    }
}

/// The memory proof: the same runs in a child process limited to 512 MiB of address space.
#[test]
fn maintenance_survives_bombs_under_a_512_mib_address_space_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let (lock_dir, snap_dir) = (tmp.path().join("lock"), tmp.path().join("snap"));
    let lock = repo_with_bomb(&lock_dir, FileType::Lock);
    let snap = repo_with_bomb(&snap_dir, FileType::Snapshot);
    let exe = std::env::current_exe().unwrap();
    let t = std::time::Instant::now();
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            r#"ulimit -v 524288 && exec "$0" --exact child_runs_maintenance --nocapture --test-threads=1"#,
        ])
        .arg(&exe)
        .env(
            CHILD_ENV,
            format!("{}:{}", lock_dir.display(), snap_dir.display()),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "child under ulimit -v 524288 took {:?}, status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        t.elapsed(),
        out.status
    );
    assert!(
        out.status.success(),
        "the maintenance process died: {:?}",
        out.status
    );
    let lines: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].contains(&lock[..8]) && lines[0].contains("larger than"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains(&snap[..8]) && lines[1].contains("larger than"),
        "{}",
        lines[1]
    );
}

/// The child half of the test above; does nothing unless started by it.
#[test]
fn child_runs_maintenance() {
    let Ok(repos) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dirs: Vec<&Path> = repos.split(':').map(Path::new).collect();
    for line in run_all(&dirs) {
        println!("RESULT {line}");
    }
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = s.lines().find(|l| l.starts_with("VmHWM")).unwrap_or("");
    println!("child {hwm}");
}
