//! Real servers for backend integration tests: MinIO for S3, `rclone serve restic` for REST.
//!
//! Every server gets its own port on 127.0.0.1 and its own temporary directory and dies with
//! its guard. A missing binary fails the test with the component's name: a backend test that
//! quietly passes without a server would prove nothing.

#![allow(dead_code)]

pub mod toxiproxy;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MINIO: &str = "/var/cache/fleetsnap/tools/minio-v0.0.0-20260212201848-7aac2a2c5b7c/minio";
pub const MINIO_USER: &str = "fleetsnap-test";
pub const MINIO_PASSWORD: &str = "fleetsnap-test-secret";

const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

/// restic 0.19.1 as `tests/testenv/tools.sh` builds it (or `FLEETSNAP_RESTIC`), or a panic
/// naming the missing component.
pub fn restic_bin() -> PathBuf {
    let p = PathBuf::from(
        std::env::var("FLEETSNAP_RESTIC")
            .unwrap_or_else(|_| "/var/cache/fleetsnap/tools/restic-v0.19.1/restic".into()),
    );
    assert!(
        p.is_file(),
        "missing component: restic 0.19.1 (FLEETSNAP_RESTIC) not found at {} \
         (build it with tests/testenv/tools.sh restic)",
        p.display()
    );
    p
}

/// Incompressible, deterministic bytes (xorshift), fast enough for hundreds of MB.
pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    seed |= 1;
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// The binary at `path`, or a panic that says what is missing and how to get it.
pub fn require_binary(component: &str, path: &Path, how: &str) -> PathBuf {
    assert!(
        path.is_file(),
        "{component} is missing: expected it at {} ({how})",
        path.display()
    );
    path.to_path_buf()
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
    })
}

/// Kills the child and reaps it when dropped, so a failing assertion never leaks a server.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `ready` until it holds, failing early if the server process has exited.
fn wait_until(what: &str, child: &mut Child, log: &Path, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        if ready() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited during startup ({status}); log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < STARTUP_DEADLINE,
            "{what} not ready after {STARTUP_DEADLINE:?}; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

fn http_status(url: &str) -> Option<u16> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    agent.get(url).call().ok().map(|r| r.status().as_u16())
}

pub struct Minio {
    _guard: Guard,
    _dir: tempfile::TempDir,
    pub endpoint: String,
}

impl Minio {
    pub fn start() -> Minio {
        Self::start_with_data(None)
    }

    /// MinIO storing its objects in `data` (e.g. a small tmpfs) instead of a fresh
    /// temporary directory.
    pub fn start_with_data(data: Option<&Path>) -> Minio {
        let bin = require_binary(
            "MinIO server",
            Path::new(MINIO),
            "build it with tests/testenv/tools.sh minio mc",
        );
        let dir = tempfile::tempdir().unwrap();
        let data = match data {
            Some(d) => d.to_path_buf(),
            None => {
                let d = dir.path().join("data");
                std::fs::create_dir(&d).unwrap();
                d
            }
        };
        let log = dir.path().join("minio.log");
        let port = free_port();
        let console = free_port();
        let child = Command::new(bin)
            .arg("server")
            .arg(&data)
            .arg("--address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--console-address")
            .arg(format!("127.0.0.1:{console}"))
            .arg("--quiet")
            .env("MINIO_ROOT_USER", MINIO_USER)
            .env("MINIO_ROOT_PASSWORD", MINIO_PASSWORD)
            .env("MINIO_BROWSER", "off")
            .env("MINIO_UPDATE", "off")
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("minio.err")).unwrap())
            .spawn()
            .expect("start MinIO");
        let mut guard = Guard(child);
        let endpoint = format!("http://127.0.0.1:{port}");
        let health = format!("{endpoint}/minio/health/live");
        wait_until("MinIO", &mut guard.0, &log, || {
            http_status(&health) == Some(200)
        });
        Minio {
            _guard: guard,
            _dir: dir,
            endpoint,
        }
    }

    /// `127.0.0.1:<port>`, for a proxy's upstream.
    pub fn addr(&self) -> String {
        self.endpoint.trim_start_matches("http://").to_string()
    }

    /// The server's process id, to freeze it with SIGSTOP.
    pub fn pid(&self) -> u32 {
        self._guard.0.id()
    }

    /// A raw SDK client with a runtime, for what the backend deliberately does not do
    /// (Object Lock bucket setup, checking how an object was uploaded).
    pub fn admin(&self) -> Admin {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .http_client(http)
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                MINIO_USER,
                MINIO_PASSWORD,
                None,
                None,
                "test",
            ))
            .build();
        Admin {
            rt,
            client: aws_sdk_s3::Client::from_conf(conf),
        }
    }
}

pub struct Admin {
    pub rt: tokio::runtime::Runtime,
    pub client: aws_sdk_s3::Client,
}

impl Admin {
    pub fn create_bucket(&self, name: &str) {
        self.rt
            .block_on(self.client.create_bucket().bucket(name).send())
            .unwrap_or_else(|e| panic!("create bucket {name}: {e:?}"));
    }

    /// A bucket with Object Lock and a default GOVERNANCE retention of one day, the setup
    /// that keeps a compromised host from destroying history.
    pub fn create_locked_bucket(&self, name: &str) {
        use aws_sdk_s3::types::{
            DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled, ObjectLockRetentionMode,
            ObjectLockRule,
        };
        self.rt
            .block_on(
                self.client
                    .create_bucket()
                    .bucket(name)
                    .object_lock_enabled_for_bucket(true)
                    .send(),
            )
            .unwrap_or_else(|e| panic!("create locked bucket {name}: {e:?}"));
        let cfg = ObjectLockConfiguration::builder()
            .object_lock_enabled(ObjectLockEnabled::Enabled)
            .rule(
                ObjectLockRule::builder()
                    .default_retention(
                        DefaultRetention::builder()
                            .mode(ObjectLockRetentionMode::Governance)
                            .days(1)
                            .build(),
                    )
                    .build(),
            )
            .build();
        self.rt
            .block_on(
                self.client
                    .put_object_lock_configuration()
                    .bucket(name)
                    .object_lock_configuration(cfg)
                    .send(),
            )
            .unwrap_or_else(|e| panic!("set retention on {name}: {e:?}"));
    }

    pub fn etag(&self, bucket: &str, key: &str) -> String {
        let h = self
            .rt
            .block_on(self.client.head_object().bucket(bucket).key(key).send())
            .unwrap_or_else(|e| panic!("head {key}: {e:?}"));
        h.e_tag().unwrap_or_default().to_string()
    }

    /// Multipart uploads started and neither completed nor aborted
    /// (ListMultipartUploads), as `key upload-id`.
    pub fn incomplete_uploads(&self, bucket: &str) -> Vec<String> {
        let out = self
            .rt
            .block_on(self.client.list_multipart_uploads().bucket(bucket).send())
            .unwrap_or_else(|e| panic!("list multipart uploads of {bucket}: {e:?}"));
        out.uploads()
            .iter()
            .map(|u| {
                format!(
                    "{} {}",
                    u.key().unwrap_or_default(),
                    u.upload_id().unwrap_or_default()
                )
            })
            .collect()
    }

    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let out = self
            .rt
            .block_on(self.client.list_objects_v2().bucket(bucket).send())
            .unwrap_or_else(|e| panic!("list {bucket}: {e:?}"));
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    }
}

pub struct Rclone {
    _guard: Guard,
    _dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub root: PathBuf,
}

impl Rclone {
    /// `rclone serve restic` over a fresh directory; `extra` adds flags such as
    /// `--append-only` or `--user`/`--pass`.
    pub fn start(extra: &[&str]) -> Rclone {
        let bin = find_in_path("rclone").unwrap_or_else(|| {
            panic!("rclone is missing from PATH (needed for the REST backend tests: apt-get install -y rclone)")
        });
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir(&root).unwrap();
        let conf = dir.path().join("rclone.conf");
        std::fs::write(&conf, "").unwrap();
        let log = dir.path().join("rclone.log");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new(bin)
            .args(["serve", "restic", "--addr", &addr.to_string()])
            .args(extra)
            .arg("--config")
            .arg(&conf)
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start rclone");
        let mut guard = Guard(child);
        wait_until("rclone serve restic", &mut guard.0, &log, || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        Rclone {
            _guard: guard,
            _dir: dir,
            addr,
            root,
        }
    }

    pub fn url(&self, userinfo: Option<&str>) -> String {
        match userinfo {
            Some(ui) => format!("rest:http://{ui}@{}/", self.addr),
            None => format!("rest:http://{}/", self.addr),
        }
    }
}

/// Deterministic, incompressible-looking test data without a random-number dependency.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A 64-hex name derived from `n`, as repository files are named.
pub fn id(n: u64) -> String {
    let mut s = String::new();
    for i in 0..4u64 {
        s.push_str(&format!(
            "{:016x}",
            n.wrapping_mul(0x1000_0001).wrapping_add(i)
        ));
    }
    s
}
