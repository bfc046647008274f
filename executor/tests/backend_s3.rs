//! The S3 backend against a real MinIO on 127.0.0.1.

mod common;

use std::sync::Arc;

use common::{Minio, id, pattern};
use fleetsnap::backend::url::{Location, parse};
use fleetsnap::backend::{Backend, BackendErrorKind, FileInfo, FileType, S3Backend, S3Options};

fn s3_location(endpoint: &str, bucket: &str, prefix: &str) -> fleetsnap::backend::url::S3Location {
    match parse(&format!("s3:{endpoint}/{bucket}/{prefix}")).unwrap() {
        Location::S3(l) => l,
        other => panic!("not an s3 location: {other:?}"),
    }
}

fn backend(minio: &Minio, bucket: &str, prefix: &str, opts: S3Options) -> S3Backend {
    let opts = S3Options {
        static_credentials: Some((common::MINIO_USER.into(), common::MINIO_PASSWORD.into())),
        ..opts
    };
    S3Backend::open(s3_location(&minio.endpoint, bucket, prefix), opts).unwrap()
}

fn sorted(mut v: Vec<FileInfo>) -> Vec<FileInfo> {
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

#[test]
fn every_trait_method_against_minio() {
    let minio = Minio::start();
    let b = backend(&minio, "repo", "hosts/web-1", S3Options::default());

    // create() makes the bucket and is idempotent.
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
    let e = b.read(FileType::Config, "config").unwrap_err();
    assert_eq!(e.kind, BackendErrorKind::NotFound, "{e}");

    let pack = pattern(300_000, 1);
    b.write(FileType::Config, "config", b"cfg").unwrap();
    b.write(FileType::Key, &id(1), b"key").unwrap();
    b.write(FileType::Pack, &id(2), &pack).unwrap();
    b.write(FileType::Snapshot, &id(3), b"snap").unwrap();
    b.write(FileType::Index, &id(4), b"").unwrap();

    // restic's default layout under the prefix, packs fanned out by two hex digits.
    let mut keys = minio.admin().keys("repo");
    keys.sort();
    let p2 = id(2);
    assert!(
        keys.contains(&format!("hosts/web-1/data/{}/{p2}", &p2[..2])),
        "{keys:?}"
    );
    assert!(keys.contains(&"hosts/web-1/config".to_string()), "{keys:?}");

    assert_eq!(b.read(FileType::Config, "config").unwrap(), b"cfg");
    assert_eq!(b.read(FileType::Pack, &id(2)).unwrap(), pack);
    assert_eq!(b.read(FileType::Index, &id(4)).unwrap(), b"");
    assert_eq!(
        b.read_range(FileType::Pack, &id(2), 1000, 5000).unwrap(),
        &pack[1000..6000]
    );
    assert_eq!(
        b.read_range(FileType::Pack, &id(2), 299_990, 10).unwrap(),
        &pack[299_990..]
    );
    let short = b
        .read_range(FileType::Pack, &id(2), 299_990, 20)
        .unwrap_err();
    assert!(short.message.contains("too short"), "{short}");
    let past = b
        .read_range(FileType::Pack, &id(2), 400_000, 20)
        .unwrap_err();
    assert!(past.message.contains("too short"), "{past}");
    // Bounded reads: the first bytes of a big file, a short file whole, an empty one.
    assert_eq!(
        b.read_prefix(FileType::Pack, &id(2), 1001).unwrap(),
        &pack[..1001]
    );
    assert_eq!(
        b.read_prefix(FileType::Config, "config", 100).unwrap(),
        b"cfg"
    );
    assert_eq!(b.read_prefix(FileType::Index, &id(4), 100).unwrap(), b"");

    assert_eq!(
        listed(&b.list(FileType::Config).unwrap()),
        vec![("config".to_string(), 3)]
    );
    assert_eq!(
        listed(&b.list(FileType::Pack).unwrap()),
        vec![(id(2), 300_000)]
    );
    // The server's write time, which retention and prune's grace period rely on.
    let written = b.list(FileType::Pack).unwrap()[0]
        .modified
        .expect("S3 lists LastModified");
    let age = std::time::SystemTime::now()
        .duration_since(written)
        .unwrap_or_default();
    assert!(
        age.as_secs() < 600,
        "LastModified {written:?} is not the upload time"
    );
    assert_eq!(b.list(FileType::Key).unwrap().len(), 1);

    b.remove(FileType::Pack, &id(2)).unwrap();
    b.remove(FileType::Pack, &id(2)).unwrap();
    assert!(b.list(FileType::Pack).unwrap().is_empty());
    let e = b.read(FileType::Pack, &id(2)).unwrap_err();
    assert_eq!(e.kind, BackendErrorKind::NotFound);
    assert!(
        e.to_string().contains(&format!("data/{}/{p2}", &p2[..2])),
        "{e}"
    );

    // Another prefix in the same bucket is another repository.
    let other = backend(&minio, "repo", "hosts/web-2", S3Options::default());
    assert!(other.list(FileType::Key).unwrap().is_empty());

    let shown = b.location();
    assert!(!shown.contains(common::MINIO_PASSWORD) && !shown.contains(common::MINIO_USER));
    assert_eq!(shown, format!("s3:{}/repo/hosts/web-1", minio.endpoint));
}

#[test]
fn listing_paginates_past_a_thousand_objects() {
    let minio = Minio::start();
    let b = Arc::new(backend(&minio, "many", "", S3Options::default()));
    b.create().unwrap();
    let n = 1100u64;
    std::thread::scope(|s| {
        for w in 0..8u64 {
            let b = b.clone();
            s.spawn(move || {
                for i in (w..n).step_by(8) {
                    b.write(FileType::Index, &id(i), b"i").unwrap();
                }
            });
        }
    });
    assert_eq!(b.list(FileType::Index).unwrap().len(), n as usize);
}

#[test]
fn concurrent_writes_from_many_threads() {
    let minio = Minio::start();
    let b: Arc<dyn Backend> = Arc::new(backend(&minio, "conc", "r", S3Options::default()));
    b.create().unwrap();
    std::thread::scope(|s| {
        for w in 0..8u64 {
            let b = b.clone();
            s.spawn(move || {
                for i in 0..8u64 {
                    let n = w * 100 + i;
                    b.write(FileType::Pack, &id(n), &pattern(200_000 + n as usize, n))
                        .unwrap();
                }
            });
        }
    });
    let listed = sorted(b.list(FileType::Pack).unwrap());
    assert_eq!(listed.len(), 64);
    for w in 0..8u64 {
        for i in 0..8u64 {
            let n = w * 100 + i;
            assert_eq!(
                b.read(FileType::Pack, &id(n)).unwrap(),
                pattern(200_000 + n as usize, n)
            );
        }
    }
}

#[test]
fn large_pack_goes_up_in_parts() {
    let minio = Minio::start();
    let b = backend(&minio, "big", "r", S3Options::default());
    b.create().unwrap();
    let data = pattern(100 << 20, 7);
    let name = id(77);
    b.write(FileType::Pack, &name, &data).unwrap();

    // A multipart object's ETag is "<md5 of part md5s>-<number of parts>".
    let etag = minio
        .admin()
        .etag("big", &format!("r/data/{}/{name}", &name[..2]));
    assert!(etag.trim_matches('"').ends_with("-7"), "etag {etag}");

    assert_eq!(
        listed(&b.list(FileType::Pack).unwrap()),
        vec![(name.clone(), 100 << 20)]
    );
    // Across the 16 MiB part boundary.
    let off = (16 << 20) - 1000;
    assert_eq!(
        b.read_range(FileType::Pack, &name, off, 4000).unwrap(),
        &data[off as usize..off as usize + 4000]
    );
    assert!(b.read(FileType::Pack, &name).unwrap() == data);
}

#[test]
fn object_lock_refuses_deleting_a_locked_version() {
    let minio = Minio::start();
    minio.admin().create_locked_bucket("worm");
    let b = backend(&minio, "worm", "r", S3Options::default());
    b.create().unwrap();
    let name = id(5);
    b.write(FileType::Snapshot, &name, b"precious").unwrap();

    // A plain delete leaves a delete marker: the file is gone for restic, history stays.
    b.remove(FileType::Snapshot, &name).unwrap();
    assert!(b.list(FileType::Snapshot).unwrap().is_empty());
    assert_eq!(
        b.read(FileType::Snapshot, &name).unwrap_err().kind,
        BackendErrorKind::NotFound
    );

    let versions = b.versions(FileType::Snapshot, &name).unwrap();
    assert_eq!(versions.len(), 1, "{versions:?}");
    let e = b
        .remove_version(FileType::Snapshot, &name, &versions[0])
        .unwrap_err();
    assert_eq!(e.kind, BackendErrorKind::Locked, "{e}");
    assert!(e.to_string().contains(&format!("snapshots/{name}")), "{e}");
    assert_eq!(b.versions(FileType::Snapshot, &name).unwrap(), versions);
}

/// What `appendOnly` rests on, read from real buckets: a plain one, a versioned one, one
/// with versioning suspended and one with Object Lock. Then an overwrite on the versioned
/// bucket (what a host with put rights can do) is found in the version listing, with the
/// version to copy back, while an identical re-upload and lock files are not.
#[test]
fn bucket_protection_and_overwrites_against_minio() {
    use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
    use fleetsnap::backend::s3::{BucketProtection, Versioning, overwritten};
    let minio = Minio::start();
    let admin = minio.admin();
    admin.create_bucket("plain");
    admin.create_locked_bucket("locked");
    for (bucket, status) in [
        ("versioned", BucketVersioningStatus::Enabled),
        ("suspended", BucketVersioningStatus::Enabled),
        ("suspended", BucketVersioningStatus::Suspended),
    ] {
        if bucket == "versioned" || status == BucketVersioningStatus::Enabled {
            let _ = admin
                .rt
                .block_on(admin.client.create_bucket().bucket(bucket).send());
        }
        admin
            .rt
            .block_on(
                admin
                    .client
                    .put_bucket_versioning()
                    .bucket(bucket)
                    .versioning_configuration(
                        VersioningConfiguration::builder().status(status).build(),
                    )
                    .send(),
            )
            .unwrap();
    }
    let want = |versioning, object_lock| BucketProtection {
        versioning,
        object_lock,
    };
    for (bucket, expected) in [
        ("plain", want(Versioning::Off, false)),
        ("versioned", want(Versioning::Enabled, false)),
        ("suspended", want(Versioning::Suspended, false)),
        ("locked", want(Versioning::Enabled, true)),
    ] {
        let b = backend(&minio, bucket, "", S3Options::default());
        assert_eq!(b.bucket_protection().unwrap(), expected, "{bucket}");
    }

    let b = backend(&minio, "versioned", "hosts/h1", S3Options::default());
    b.write(FileType::Config, "config", b"original config")
        .unwrap();
    b.write(FileType::Snapshot, &id(1), b"original snapshot")
        .unwrap();
    b.write(FileType::Pack, &id(2), &pattern(1000, 2)).unwrap();
    b.write(FileType::Lock, &id(3), b"lock 1").unwrap();
    let original = b.versions(FileType::Config, "config").unwrap();
    assert_eq!(original.len(), 1);
    // The attack, and what restic itself does: a retried pack upload, a lock rewritten.
    b.write(FileType::Config, "config", b"junk").unwrap();
    b.write(FileType::Pack, &id(2), &pattern(1000, 2)).unwrap();
    b.write(FileType::Lock, &id(3), b"lock 2").unwrap();
    let listing = b.object_versions().unwrap();
    assert!(
        listing.iter().all(|v| !v.key.starts_with("hosts/")),
        "{listing:?}"
    );
    let found = overwritten(&listing);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, "config");
    assert_eq!(found[0].original_version, original[0]);
    assert_eq!(found[0].versions, 2);
    // A plain bucket has one version per key whatever happened: nothing to find, nothing
    // to recover.
    let p = backend(&minio, "plain", "hosts/h1", S3Options::default());
    p.write(FileType::Config, "config", b"original config")
        .unwrap();
    p.write(FileType::Config, "config", b"junk").unwrap();
    assert!(overwritten(&p.object_versions().unwrap()).is_empty());
    assert_eq!(p.read(FileType::Config, "config").unwrap(), b"junk");
}

#[test]
fn wrong_credentials_are_denied() {
    let minio = Minio::start();
    minio.admin().create_bucket("private");
    let loc = s3_location(&minio.endpoint, "private", "r");
    let b = S3Backend::open(
        loc,
        S3Options {
            static_credentials: Some((common::MINIO_USER.into(), "not-the-secret".into())),
            max_attempts: Some(2),
            ..S3Options::default()
        },
    )
    .unwrap();
    let e = b.write(FileType::Key, &id(1), b"k").unwrap_err();
    assert_eq!(e.kind, BackendErrorKind::Denied, "{e}");
    assert!(!e.to_string().contains("not-the-secret"), "{e}");
    let e = b.list(FileType::Key).unwrap_err();
    assert_eq!(e.kind, BackendErrorKind::Denied, "{e}");
}

#[test]
fn unreachable_endpoint_is_transient() {
    let port = common::free_port();
    let loc = s3_location(&format!("http://127.0.0.1:{port}"), "b", "");
    let b = S3Backend::open(
        loc,
        S3Options {
            static_credentials: Some(("k".into(), "s".into())),
            max_attempts: Some(2),
            ..S3Options::default()
        },
    )
    .unwrap();
    let e = b.read(FileType::Config, "config").unwrap_err();
    assert_eq!(e.kind, BackendErrorKind::Transient, "{e}");
}

/// `backend::open` takes credentials, region and addressing from the environment, as restic
/// users expect. Environment changes are not thread-safe, so the check runs in a child
/// process: this same test binary, re-run with only this test selected.
#[test]
fn open_takes_credentials_and_region_from_the_environment() {
    if let Ok(url) = std::env::var("FLEETSNAP_TEST_S3_URL") {
        let b = fleetsnap::backend::open(&url).unwrap();
        b.create().unwrap();
        b.write(FileType::Key, &id(9), b"from env").unwrap();
        assert_eq!(b.read(FileType::Key, &id(9)).unwrap(), b"from env");
        assert_eq!(b.location(), url);
        return;
    }
    let minio = Minio::start();
    let home = tempfile::tempdir().unwrap();
    let url = format!("s3:{}/envbucket/p", minio.endpoint);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "open_takes_credentials_and_region_from_the_environment",
            "--nocapture",
        ])
        .env_clear()
        .env("HOME", home.path())
        .env("FLEETSNAP_TEST_S3_URL", &url)
        .env("AWS_ACCESS_KEY_ID", common::MINIO_USER)
        .env("AWS_SECRET_ACCESS_KEY", common::MINIO_PASSWORD)
        .env("AWS_DEFAULT_REGION", "eu-central-1")
        .env("FLEETSNAP_S3_PATH_STYLE", "true")
        // No instance-metadata probes from a test.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "child ran no test:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        minio
            .admin()
            .keys("envbucket")
            .iter()
            .any(|k| k.starts_with("p/keys/")),
        "object not in the bucket"
    );
}

/// A listing as (name, size) pairs: write times are the server's and differ per run.
fn listed(files: &[FileInfo]) -> Vec<(String, u64)> {
    files.iter().map(|f| (f.name.clone(), f.size)).collect()
}

/// A zstd bomb (1 GiB of zeros, sealed with the repository key) and a 5 MiB object planted as
/// locks in an S3 repository: taking the lock fails naming each file, without downloading
/// more than the lock cap of either.
#[test]
fn planted_oversized_locks_are_refused_on_s3() {
    use std::io::Write as _;
    let minio = Minio::start();
    let b: Arc<dyn Backend> = Arc::new(backend(&minio, "bombs", "h1", S3Options::default()));
    let r = fleetsnap::repo::Repository::init(b.clone(), b"pw").unwrap();
    let mut enc = zstd::stream::Encoder::new(vec![2u8], 3).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        enc.write_all(&chunk).unwrap();
    }
    let sealed = r.key().seal(&enc.finish().unwrap());
    let bomb = fleetsnap::id::Id::hash(&sealed).to_hex();
    b.write(FileType::Lock, &bomb, &sealed).unwrap();
    let t = std::time::Instant::now();
    let e = fleetsnap::lock::acquire(&r, true)
        .err()
        .unwrap()
        .to_string();
    eprintln!("S3 lock bomb refused in {:?}: {e}", t.elapsed());
    assert!(e.contains(&bomb[..8]) && e.contains("larger than"), "{e}");
    b.remove(FileType::Lock, &bomb).unwrap();

    let big = id(7);
    b.write(FileType::Lock, &big, &pattern(5 << 20, 9)).unwrap();
    let e = fleetsnap::lock::acquire(&r, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(&big[..8]) && e.contains("stored file is larger than"),
        "{e}"
    );
}
