//! End-to-end runs against a local repository in a temp dir.

use super::*;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("creds")).unwrap();
        // The trailing newline is dropped when the credential is read (password::normalize).
        std::fs::write(dir.path().join("creds/repository-password"), b"pw\n").unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a.txt"), b"alpha").unwrap();
        std::fs::write(src.join("sub/b.bin"), vec![7u8; 300_000]).unwrap();
        Env { dir }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self, kind: &str, extra: serde_json::Value) -> PathBuf {
        let mut v = serde_json::json!({
            "format": 1, "policy": "nightly", "kind": kind,
            "repository": self.p("repo").to_str().unwrap(),
            "paths": [self.p("src").to_str().unwrap()],
            "excludes": [], "exclude_caches": false, "one_file_system": false,
            "stdin": [], "tags": ["nightly"], "host": "web-1", "extra_args": [],
            "credentials": {"repository_password": "repository-password"},
            "run_record_dir": self.p(&format!("runs/{kind}-nightly")).to_str().unwrap(),
            "cache_dir": self.p("cache").to_str().unwrap(),
        });
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        let path = self.p(&format!("{kind}.json"));
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        path
    }

    fn run(&self, cfg: &Path) -> (i32, RunRecord) {
        let code = run_file_with(cfg, Some(&self.p("creds")));
        let c = config::load(cfg).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(&c.run_record_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        let rec = serde_json::from_slice(&std::fs::read(names.last().unwrap()).unwrap()).unwrap();
        (code, rec)
    }

    fn open(&self) -> IndexedRepository {
        let be = backend::open(self.p("repo").to_str().unwrap()).unwrap();
        Repository::open(be, b"pw").unwrap().load_index().unwrap()
    }
}

#[test]
fn backup_inits_then_reuses_and_stores_stdin_sources() {
    let env = Env::new();
    let cfg = env.config(
        "backup",
        serde_json::json!({"stdin": [{"name": "greeting", "command": ["sh", "-c", "printf hello"], "filename": "greeting.txt"}]}),
    );
    let (code, rec) = env.run(&cfg);
    assert_eq!(code, 0, "{rec:?}");
    assert_eq!(rec.exit_code, 0);
    assert!(rec.error.is_none());
    assert_eq!(rec.kind, JobKind::Backup);
    assert_eq!(rec.snapshot_id.as_ref().unwrap().len(), 64);
    // Two files from the paths snapshot plus the stream.
    assert_eq!(rec.files_new, 3);
    assert!(rec.bytes_added > 0);

    let repo = env.open();
    let snaps = repo.snapshots().unwrap();
    assert_eq!(snaps.len(), 2);
    assert!(
        snaps
            .iter()
            .all(|(_, s)| s.hostname == "web-1" && s.tags == ["nightly"])
    );
    assert!(snaps.iter().any(|(_, s)| s.paths == ["/greeting.txt"]));

    // The repository exists now; the second run must reuse it and find the parent.
    let (code, rec) = env.run(&cfg);
    assert_eq!(code, 0, "{rec:?}");
    assert_eq!(rec.files_unmodified, 2);
    assert_eq!(env.open().snapshots().unwrap().len(), 4);
}

#[test]
fn failing_stdin_command_fails_the_run_with_a_record() {
    let env = Env::new();
    let cfg = env.config(
        "backup",
        serde_json::json!({"paths": [], "stdin": [{"name": "pg", "command": ["sh", "-c", "exit 4"], "filename": "dump.sql"}]}),
    );
    let (code, rec) = env.run(&cfg);
    assert_eq!(code, 1);
    assert_eq!(rec.exit_code, 1);
    let err = rec.error.unwrap();
    assert!(err.contains("\"pg\"") && err.contains("failed"), "{err}");
    assert!(rec.snapshot_id.is_none());
    assert!(env.open().snapshots().unwrap().is_empty());
}

#[test]
fn missing_credentials_and_wrong_password_are_recorded() {
    let env = Env::new();
    let cfg = env.config(
        "backup",
        serde_json::json!({"credentials": {"repository_password": "nope"}}),
    );
    let (code, rec) = env.run(&cfg);
    assert_eq!(code, 1);
    assert!(rec.error.unwrap().contains("credential \"nope\""));

    let ok = env.config("backup", serde_json::json!({}));
    assert_eq!(env.run(&ok).0, 0);
    std::fs::write(env.p("creds/repository-password"), b"other").unwrap();
    let (code, rec) = env.run(&ok);
    assert_eq!(code, crate::cli::EXIT_WRONG_PASSWORD);
    assert!(rec.error.unwrap().contains("wrong password"));
}

#[test]
fn verify_checks_and_drills_then_cleans_up() {
    let env = Env::new();
    assert_eq!(env.run(&env.config("backup", serde_json::json!({}))).0, 0);
    let scratch = env.p("scratch");
    let cfg = env.config(
        "verify",
        serde_json::json!({"extra_args": ["--read-data-subset", "1/2", "--restore-drill-files", "5", "--scratch", scratch.to_str().unwrap()]}),
    );
    let (code, rec) = env.run(&cfg);
    assert_eq!(code, 0, "{rec:?}");
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);

    let repo = env.open();
    let rep = restore_drill(&repo, 5, &scratch).unwrap();
    assert_eq!(rep.files, 2);
    assert_eq!(rep.bytes, 300_005);

    let bad = env.config(
        "verify",
        serde_json::json!({"extra_args": ["--restore-drill-files", "2"]}),
    );
    let (code, rec) = env.run(&bad);
    assert_eq!(code, 1);
    assert!(rec.error.unwrap().contains("--scratch"));
    let unknown = env.config("verify", serde_json::json!({"extra_args": ["--bogus"]}));
    assert_eq!(env.run(&unknown).0, 1);
}

#[test]
fn stdin_user_wraps_in_runuser() {
    let s = StdinSource {
        name: "pg".into(),
        command: vec!["pg_dumpall".into(), "-c".into()],
        filename: "pg.sql".into(),
        user: Some("postgres".into()),
    };
    assert_eq!(
        stdin_argv(&s),
        ["runuser", "-u", "postgres", "--", "pg_dumpall", "-c"]
    );
    let plain = StdinSource { user: None, ..s };
    assert_eq!(stdin_argv(&plain), ["pg_dumpall", "-c"]);
}

#[test]
fn drill_args_are_split_from_check_args() {
    let args: Vec<String> = [
        "--read-data-subset",
        "3/20",
        "--restore-drill-files=4",
        "--scratch",
        "/tmp/x",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (rest, drill) = split_drill_args(&args).unwrap();
    assert_eq!(rest, ["--read-data-subset", "3/20"]);
    assert_eq!(drill, Some((4, PathBuf::from("/tmp/x"))));
    assert!(split_drill_args(&["--restore-drill-files".to_string()]).is_err());
}

#[test]
fn retention_forgets_and_prunes() {
    let env = Env::new();
    let backup = env.config("backup", serde_json::json!({}));
    assert_eq!(env.run(&backup).0, 0);
    std::fs::write(env.p("src/a.txt"), b"changed").unwrap();
    assert_eq!(env.run(&backup).0, 0);
    let cfg = env.config(
        "retention",
        serde_json::json!({"extra_args": ["--keep-last", "1", "--max-unused", "0%"]}),
    );
    let (code, rec) = env.run(&cfg);
    assert_eq!(code, 0, "{rec:?}");
    assert_eq!(rec.kind, JobKind::Retention);
    assert_eq!(env.open().snapshots().unwrap().len(), 1);
    let be = backend::open(env.p("repo").to_str().unwrap()).unwrap();
    let rep = crate::check::check(Repository::open(be, b"pw").unwrap(), None).unwrap();
    assert!(rep.ok() && rep.warnings.is_empty(), "{rep:?}");
}

#[test]
fn two_first_runs_on_one_host_initialise_the_repository_once() {
    // A host's file and database policies on the same schedule start together on a fresh
    // repository: both must succeed and leave one key that opens it (for restic too).
    let env = Env::new();
    let files = env.config("backup", serde_json::json!({}));
    let db = env.p("backup-db.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&files).unwrap()).unwrap();
    v["policy"] = "db".into();
    v["paths"] = serde_json::json!([]);
    v["stdin"] = serde_json::json!([{"name": "pg", "command": ["sh", "-c", "printf dump"], "filename": "dump.sql"}]);
    v["run_record_dir"] = env.p("runs/backup-db").to_str().unwrap().into();
    std::fs::write(&db, serde_json::to_vec(&v).unwrap()).unwrap();
    let creds = env.p("creds");
    let codes: Vec<i32> = std::thread::scope(|s| {
        let a = s.spawn(|| run_file_with(&files, Some(&creds)));
        let b = s.spawn(|| run_file_with(&db, Some(&creds)));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    assert_eq!(codes, [0, 0]);
    assert_eq!(std::fs::read_dir(env.p("repo/keys")).unwrap().count(), 1);
    assert_eq!(env.open().snapshots().unwrap().len(), 2);
}

/// A lock as a killed run of `host` left it: exclusive, with the PID of a process that is gone.
fn plant_lock(env: &Env, host: &str, pid: i64) -> crate::id::Id {
    let be = backend::open(env.p("repo").to_str().unwrap()).unwrap();
    let repo = Repository::open(be, b"pw").unwrap();
    let mut l = crate::lock::LockFile::new(true);
    l.hostname = host.to_string();
    l.pid = pid;
    repo.save_unpacked(crate::backend::FileType::Lock, &l)
        .unwrap()
}

fn dead_pid() -> i64 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    c.wait().unwrap();
    c.id() as i64
}

fn locks(env: &Env) -> usize {
    std::fs::read_dir(env.p("repo/locks")).unwrap().count()
}

#[test]
fn a_killed_runs_lock_does_not_block_the_next_run() {
    let env = Env::new();
    let backup = env.config("backup", serde_json::json!({}));
    assert_eq!(env.run(&backup).0, 0);
    let host = crate::repo::hostname();
    // This host's dead run: removed by every kind of job, which then succeeds.
    for kind in ["backup", "verify", "retention"] {
        let extra = match kind {
            "retention" => serde_json::json!({"extra_args": ["--keep-last", "5"]}),
            _ => serde_json::json!({}),
        };
        let cfg = env.config(kind, extra);
        plant_lock(&env, &host, dead_pid());
        let (code, rec) = env.run(&cfg);
        assert_eq!(code, 0, "{kind}: {rec:?}");
        assert_eq!(locks(&env), 0, "{kind} left the dead lock");
    }
    // A live process of ours, and another host's lock: not ours to judge, so the run is
    // refused as locked and both stay.
    plant_lock(&env, &host, std::process::id() as i64);
    plant_lock(&env, "operator-0", dead_pid());
    let (code, rec) = env.run(&backup);
    assert_eq!(code, crate::cli::EXIT_LOCKED, "{rec:?}");
    assert_eq!(locks(&env), 2);
}

/// A verify (check locks exclusively) of another process is running when the backup starts:
/// with a lock wait the backup waits it out instead of losing the day's snapshot.
#[test]
fn a_backup_waits_out_an_exclusive_lock_within_the_lock_wait() {
    let env = Env::new();
    assert_eq!(env.run(&env.config("backup", serde_json::json!({}))).0, 0);
    let verify = plant_lock(&env, "verifier", std::process::id() as i64);
    let path = env.p(&format!("repo/locks/{}", verify.to_hex()));
    let cfg = env.config("backup", serde_json::json!({"lock_wait_seconds": 60}));
    let (code, rec, released) = std::thread::scope(|s| {
        let holder = s.spawn(|| {
            std::thread::sleep(Duration::from_secs(2));
            std::fs::remove_file(&path).unwrap();
            record::now()
        });
        let (code, rec) = env.run(&cfg);
        (code, rec, holder.join().unwrap())
    });
    assert_eq!(code, 0, "the backup did not wait out the lock: {rec:?}");
    assert!(
        rec.finished >= released,
        "finished before the lock went away"
    );
    assert_eq!(env.open().snapshots().unwrap().len(), 2);

    // A lock that stays: refused once the wait is up, saying so.
    plant_lock(&env, "verifier", std::process::id() as i64);
    let short = env.config("backup", serde_json::json!({"lock_wait_seconds": 1}));
    let (code, rec) = env.run(&short);
    assert_eq!(code, crate::cli::EXIT_LOCKED, "{rec:?}");
    let err = rec.error.unwrap();
    assert!(err.contains("gave up after waiting 1s"), "{err}");
}

/// The jobs of one host take turns on a local flock before they touch the repository.
#[test]
fn a_hosts_jobs_take_turns() {
    let env = Env::new();
    std::fs::create_dir_all(env.p("cache")).unwrap();
    let other = std::fs::File::create(env.p("cache/jobs.lock")).unwrap();
    other.lock().unwrap();
    let cfg = env.config("backup", serde_json::json!({"lock_wait_seconds": 60}));
    let (code, rec, released) = std::thread::scope(|s| {
        let holder = s.spawn(|| {
            std::thread::sleep(Duration::from_secs(3));
            let at = record::now();
            other.unlock().unwrap();
            at
        });
        let (code, rec) = env.run(&cfg);
        (code, rec, holder.join().unwrap())
    });
    assert_eq!(code, 0, "{rec:?}");
    assert!(
        rec.finished >= released,
        "the job ran while another job of the host held its turn"
    );

    let other = std::fs::File::create(env.p("cache/jobs.lock")).unwrap();
    other.lock().unwrap();
    let short = env.config("backup", serde_json::json!({"lock_wait_seconds": 1}));
    let (code, rec) = env.run(&short);
    assert_eq!(code, crate::cli::EXIT_LOCKED, "{rec:?}");
    let err = rec.error.unwrap();
    assert!(err.contains("another fleetsnap job of this host"), "{err}");
    // Without a wait the jobs do not take turns, as before (two backups share the lock).
    let (code, rec) = env.run(&env.config("backup", serde_json::json!({})));
    assert_eq!(code, 0, "{rec:?}");
}

/// systemd before 247 has no `LoadCredential=`: the config names root-only files, which the
/// executor opens itself, and only when they could not have been read or replaced by others.
#[test]
fn without_a_credentials_directory_root_only_files_named_by_the_config_are_used() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let file = env.p("store/backup-nightly.repository-password");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, b"pw\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = env.config(
        "backup",
        serde_json::json!({"credential_files": {"repository-password": file.to_str().unwrap()}}),
    );
    let record = |code: i32| {
        let c = config::load(&cfg).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(&c.run_record_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        let rec: RunRecord =
            serde_json::from_slice(&std::fs::read(names.last().unwrap()).unwrap()).unwrap();
        assert_eq!(rec.exit_code, code);
        rec
    };
    // This test runs as root in CI (the file is root's); elsewhere the owner check refuses it.
    let root = unsafe { libc::geteuid() } == 0;
    let code = run_file_with(&cfg, None);
    if root {
        assert_eq!(code, 0, "{:?}", record(code).error);
        assert_eq!(env.open().snapshots().unwrap().len(), 1);
    } else {
        assert_eq!(code, EXIT_FATAL);
        assert!(record(code).error.unwrap().contains("owned by root"));
    }

    // Readable by the group: the secret may have leaked, so the run stops and says why.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let code = run_file_with(&cfg, None);
    assert_eq!(code, EXIT_FATAL);
    let err = record(code).error.unwrap();
    assert!(
        err.contains("must be owned by root with mode 0600") && err.contains("mode 640"),
        "{err}"
    );

    // A symlink in its place is not followed.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = env.p("store/link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let cfg_link = env.config(
        "backup",
        serde_json::json!({"credential_files": {"repository-password": link.to_str().unwrap()}}),
    );
    assert_eq!(run_file_with(&cfg_link, None), EXIT_FATAL);

    // Without a directory and without a named file there is nothing to read.
    let bare = env.config("backup", serde_json::json!({}));
    assert_eq!(run_file_with(&bare, None), EXIT_FATAL);
    let err = record(EXIT_FATAL).error.unwrap();
    assert!(err.contains("names no file for it"), "{err}");
}
