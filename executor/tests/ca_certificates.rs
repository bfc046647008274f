//! Hosts without CA certificates: minimal images (debootstrap's minbase, appliances, many
//! containers) have no `ca-certificates` bundle. The executor must still reach a plain-http
//! endpoint (an S3 gateway on the private network), and must refuse an https endpoint with
//! an error that names what is missing, never by panicking.
//!
//! `SSL_CERT_FILE` and `SSL_CERT_DIR` point at an empty file and directory: the system's
//! bundle is replaced by nothing, as on such a host.

mod common;

use std::process::{Command, Output, Stdio};

use common::{MINIO_PASSWORD, MINIO_USER, Minio};

const PASSWORD: &str = "ca-test-password";

fn without_ca(tmp: &std::path::Path, repo: &str, args: &[&str]) -> Output {
    let empty = tmp.join("empty.pem");
    std::fs::write(&empty, b"").unwrap();
    std::fs::create_dir_all(tmp.join("no-certs")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_fleetsnap"))
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD", PASSWORD)
        .env("AWS_ACCESS_KEY_ID", MINIO_USER)
        .env("AWS_SECRET_ACCESS_KEY", MINIO_PASSWORD)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("SSL_CERT_FILE", &empty)
        .env("SSL_CERT_DIR", tmp.join("no-certs"))
        .env("HOME", tmp)
        .env("FLEETSNAP_S3_MAX_ATTEMPTS", "1")
        .env("FLEETSNAP_S3_TIMEOUT", "5")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_host_without_ca_certificates_backs_up_over_plain_http() {
    let minio = Minio::start();
    minio.admin().create_bucket("no-ca");
    let tmp = tempfile::tempdir().unwrap();
    let repo = format!("s3:{}/no-ca/repo", minio.endpoint);
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"a file on a minimal host").unwrap();
    for args in [vec!["init"], vec!["backup", src.to_str().unwrap()]] {
        let o = without_ca(tmp.path(), &repo, &args);
        assert!(
            o.status.success(),
            "{args:?} without CA certificates: {}",
            text(&o)
        );
    }
}

#[test]
fn an_https_endpoint_without_ca_certificates_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    // Nothing listens there: the refusal must come before any connection is tried.
    let o = without_ca(tmp.path(), "s3:https://127.0.0.1:9/ca/repo", &["snapshots"]);
    let all = text(&o);
    assert!(!o.status.success(), "{all}");
    assert_ne!(o.status.code(), Some(101), "the executor panicked: {all}");
    assert!(all.contains("no CA certificates"), "{all}");
    assert!(all.contains("SSL_CERT_FILE"), "{all}");
}
