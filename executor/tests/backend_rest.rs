//! The REST backend against a real `rclone serve restic` on 127.0.0.1.

mod common;

use std::sync::Arc;

use common::{Rclone, id, pattern};
use fleetsnap::backend::{self, Backend, BackendErrorKind, FileInfo, FileType};

#[test]
fn every_trait_method_against_rclone() {
    let server = Rclone::start(&[]);
    let b = backend::open(&server.url(None)).unwrap();
    b.create().unwrap();
    b.create().unwrap();
    for t in [
        FileType::Config,
        FileType::Key,
        FileType::Pack,
        FileType::Lock,
    ] {
        assert!(b.list(t).unwrap().is_empty(), "{t} not empty");
    }
    assert_eq!(
        b.read(FileType::Config, "config").unwrap_err().kind,
        BackendErrorKind::NotFound
    );

    let pack = pattern(40 << 20, 3);
    b.write(FileType::Config, "config", b"cfg").unwrap();
    b.write(FileType::Key, &id(1), b"key").unwrap();
    b.write(FileType::Pack, &id(2), &pack).unwrap();
    b.write(FileType::Lock, &id(3), b"lock").unwrap();

    assert_eq!(b.read(FileType::Config, "config").unwrap(), b"cfg");
    assert!(b.read(FileType::Pack, &id(2)).unwrap() == pack);
    assert_eq!(
        b.read_range(FileType::Pack, &id(2), 12345, 777).unwrap(),
        &pack[12345..12345 + 777]
    );
    let short = b
        .read_range(FileType::Pack, &id(2), (40 << 20) - 5, 10)
        .unwrap_err();
    assert!(short.message.contains("too short"), "{short}");
    // Bounded reads: the first bytes of a big file, a short file whole, an empty one.
    assert!(b.read_prefix(FileType::Pack, &id(2), 1001).unwrap() == pack[..1001]);
    assert_eq!(b.read_prefix(FileType::Lock, &id(3), 100).unwrap(), b"lock");
    assert_eq!(
        b.read_prefix(FileType::Config, "config", 3).unwrap(),
        b"cfg"
    );

    assert_eq!(
        listed(&b.list(FileType::Config).unwrap()),
        vec![("config".to_string(), 3)]
    );
    assert_eq!(
        listed(&b.list(FileType::Pack).unwrap()),
        vec![(id(2), 40 << 20)]
    );
    assert_eq!(b.list(FileType::Key).unwrap()[0].name, id(1));

    b.remove(FileType::Lock, &id(3)).unwrap();
    b.remove(FileType::Lock, &id(3)).unwrap();
    assert!(b.list(FileType::Lock).unwrap().is_empty());
    let e = b.read(FileType::Lock, &id(3)).unwrap_err();
    assert_eq!(e.kind, BackendErrorKind::NotFound, "{e}");
    // The REST layout keeps packs flat under data/.
    assert!(
        b.read(FileType::Pack, &id(9))
            .unwrap_err()
            .to_string()
            .contains(&format!("data/{}", id(9)))
    );
}

#[test]
fn concurrent_writes_from_many_threads() {
    let server = Rclone::start(&[]);
    let b = backend::open(&server.url(None)).unwrap();
    b.create().unwrap();
    std::thread::scope(|s| {
        for w in 0..8u64 {
            let b: Arc<dyn Backend> = b.clone();
            s.spawn(move || {
                for i in 0..8u64 {
                    let n = w * 100 + i;
                    b.write(FileType::Pack, &id(n), &pattern(100_000 + n as usize, n))
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(b.list(FileType::Pack).unwrap().len(), 64);
    for n in [0u64, 107, 703] {
        assert_eq!(
            b.read(FileType::Pack, &id(n)).unwrap(),
            pattern(100_000 + n as usize, n)
        );
    }
}

#[test]
fn append_only_server_refuses_delete_clearly() {
    let server = Rclone::start(&["--append-only"]);
    let b = backend::open(&server.url(None)).unwrap();
    b.create().unwrap();
    b.write(FileType::Snapshot, &id(1), b"snap").unwrap();

    let e = b.remove(FileType::Snapshot, &id(1)).unwrap_err();
    assert_eq!(e.kind, BackendErrorKind::Denied, "{e}");
    assert!(
        e.message.contains(&format!(
            "the REST server refused to delete snapshots/{}: it is append-only for this identity",
            id(1)
        )),
        "{e}"
    );
    assert_eq!(b.read(FileType::Snapshot, &id(1)).unwrap(), b"snap");
}

/// What a compromised host can send an append-only server: a POST over every kind of
/// existing file (one after another, then sixteen at once) and a DELETE. The server must
/// refuse all of it and keep the content. Checked against the rclone testenv ships (Debian's
/// 1.60.1); docs/backends.md names the versions this holds for.
#[test]
fn append_only_server_refuses_overwrites_of_every_file_kind() {
    let server = Rclone::start(&["--append-only"]);
    let b = backend::open(&server.url(None)).unwrap();
    b.create().unwrap();
    let base = format!("http://{}/", server.addr);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let post = |agent: &ureq::Agent, path: &str, body: &[u8]| -> u16 {
        agent
            .post(format!("{base}{path}"))
            .send(body)
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    let files: Vec<(String, Vec<u8>)> =
        [("data", 1u64), ("index", 2), ("snapshots", 3), ("keys", 4)]
            .iter()
            .map(|(dir, n)| (format!("{dir}/{}", id(*n)), pattern(1000 + *n as usize, *n)))
            .chain([("config".to_string(), b"original config".to_vec())])
            .collect();
    for (path, body) in &files {
        assert_eq!(post(&agent, path, body), 200, "first write of {path}");
    }
    for (path, _) in &files {
        assert_eq!(post(&agent, path, b"junk"), 403, "overwrite of {path}");
        let del = agent
            .delete(format!("{base}{path}"))
            .call()
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        assert_eq!(del, 403, "delete of {path}");
    }
    // Concurrent overwrites: the existence check and the write must not race.
    std::thread::scope(|s| {
        for (path, _) in &files {
            for i in 0..16u8 {
                let (agent, post) = (&agent, &post);
                s.spawn(move || {
                    let code = post(agent, path, &[b'j', i]);
                    assert_ne!(code / 100, 2, "concurrent overwrite {i} of {path}: {code}");
                });
            }
        }
    });
    for (path, body) in &files {
        let got = agent
            .get(format!("{base}{path}"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_vec()
            .unwrap();
        assert_eq!(&got, body, "{path} changed");
    }
    let pack = &files[0].0["data/".len()..];
    assert_eq!(b.read(FileType::Pack, pack).unwrap(), files[0].1);
}

#[test]
fn basic_auth_and_no_password_in_messages() {
    let server = Rclone::start(&["--user", "host-1", "--pass", "s3cr3t/pw"]);
    let good = backend::open(&server.url(Some("host-1:s3cr3t%2Fpw"))).unwrap();
    good.create().unwrap();
    good.write(FileType::Key, &id(1), b"k").unwrap();
    assert_eq!(good.list(FileType::Key).unwrap().len(), 1);
    assert!(!good.location().contains("s3cr3t"), "{}", good.location());

    let bad = backend::open(&server.url(Some("host-1:wrong-pw"))).unwrap();
    let e = bad.list(FileType::Key).unwrap_err();
    assert_eq!(e.kind, BackendErrorKind::Denied, "{e}");
    assert!(!e.to_string().contains("wrong-pw"), "{e}");
}

#[test]
fn unreachable_server_fails_as_transient() {
    let port = common::free_port();
    let b = backend::RestBackend::open(
        match backend::url::parse(&format!("rest:http://127.0.0.1:{port}/")).unwrap() {
            backend::Location::Rest(l) => l,
            other => panic!("{other:?}"),
        },
    )
    .unwrap()
    .with_retry(backend::retry::RetryPolicy {
        max_attempts: 2,
        initial_backoff: std::time::Duration::from_millis(1),
        max_backoff: std::time::Duration::from_millis(2),
    });
    let e = b.list(FileType::Index).unwrap_err();
    assert_eq!(e.kind, BackendErrorKind::Transient, "{e}");
}

/// A listing as (name, size) pairs: write times are the server's and differ per run.
fn listed(files: &[FileInfo]) -> Vec<(String, u64)> {
    files.iter().map(|f| (f.name.clone(), f.size)).collect()
}

fn fleetsnap() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_fleetsnap"))
}

/// The REST login of a scheduled job comes as two credentials named in the job config, the
/// way the operator delivers it; without them the server refuses the job (401), with them it
/// backs up, and the login is in no argument, record or message.
#[test]
fn a_scheduled_job_logs_in_with_its_rest_credentials() {
    const PASS: &str = "job-rest-pass-0c4e";
    let server = Rclone::start(&["--user", "fleet", "--pass", PASS]);
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s);
    std::fs::create_dir_all(p("creds")).unwrap();
    std::fs::create_dir_all(p("src")).unwrap();
    std::fs::write(p("src/file"), pattern(1 << 20, 9)).unwrap();
    std::fs::write(p("creds/repository-password"), b"pw\n").unwrap();
    std::fs::write(p("creds/rest-username"), b"fleet\n").unwrap();
    std::fs::write(p("creds/rest-password"), format!("{PASS}\n")).unwrap();
    let run = |credentials: serde_json::Value| {
        let cfg = serde_json::json!({
            "format": 1, "policy": "nightly", "kind": "backup",
            "repository": format!("{}web-1", server.url(None)),
            "paths": [p("src").to_str().unwrap()],
            "host": "web-1",
            "credentials": credentials,
            "run_record_dir": p("runs").to_str().unwrap(),
            "cache_dir": p("cache").to_str().unwrap(),
        });
        std::fs::write(p("job.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
        std::process::Command::new(fleetsnap())
            .args(["run", "--config"])
            .arg(p("job.json"))
            .env("CREDENTIALS_DIRECTORY", p("creds"))
            .env_remove("RESTIC_REST_USERNAME")
            .env_remove("RESTIC_REST_PASSWORD")
            .output()
            .unwrap()
    };
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let anonymous = run(serde_json::json!({"repository_password": "repository-password"}));
    assert!(
        !anonymous.status.success(),
        "the server let an anonymous job in"
    );
    assert!(
        text(&anonymous).contains("401") || text(&anonymous).to_lowercase().contains("denied"),
        "{}",
        text(&anonymous)
    );

    let half = run(
        serde_json::json!({"repository_password": "repository-password",
        "rest_username": "rest-username"}),
    );
    assert!(
        text(&half).contains("rest_username and rest_password come as a pair"),
        "{}",
        text(&half)
    );

    let logged_in = run(
        serde_json::json!({"repository_password": "repository-password",
        "rest_username": "rest-username", "rest_password": "rest-password"}),
    );
    assert!(logged_in.status.success(), "{}", text(&logged_in));
    assert!(server.root.join("web-1/config").exists());
    let records: String = std::fs::read_dir(p("runs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(!records.is_empty());
    for out in [text(&anonymous), text(&half), text(&logged_in), records] {
        assert!(!out.contains(PASS), "the REST password leaked: {out}");
    }
}

/// The CLI takes a REST login from `RESTIC_REST_USERNAME`/`RESTIC_REST_PASSWORD` as restic
/// does (the Restore script hands it over that way), and a login in the URL wins.
#[test]
fn the_cli_reads_a_rest_login_from_the_environment() {
    let server = Rclone::start(&["--user", "env-user", "--pass", "env-pass-51"]);
    let run = |url: String, login: Option<(&str, &str)>| {
        let mut c = std::process::Command::new(fleetsnap());
        c.args(["-r", &url, "init"])
            .env("RESTIC_PASSWORD", "pw")
            .env_remove("RESTIC_REST_USERNAME")
            .env_remove("RESTIC_REST_PASSWORD");
        if let Some((u, p)) = login {
            c.env("RESTIC_REST_USERNAME", u)
                .env("RESTIC_REST_PASSWORD", p);
        }
        c.output().unwrap()
    };
    assert!(!run(format!("{}a", server.url(None)), None).status.success());
    let o = run(
        format!("{}a", server.url(None)),
        Some(("env-user", "env-pass-51")),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(
        format!("{}b", server.url(Some("env-user:wrong"))),
        Some(("env-user", "env-pass-51")),
    );
    assert!(
        !o.status.success(),
        "the environment overrode the URL's login"
    );
}
