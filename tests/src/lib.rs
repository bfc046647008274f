//! testenv: the real components the integration and end-to-end suites run against —
//! kube-apiserver + etcd, MinIO, the real `restic` (newest and Debian's 0.14), rclone, and a
//! fleet of Debian hosts with systemd + sshd (nspawn containers or qemu VMs).
//!
//! Everything is started by `tests/testenv/testenv.sh up --hold`, the same script humans use;
//! this crate only drives it. The script stays in the foreground until the pipe to its stdin
//! closes, so the environment is torn down when the owning [`TestEnv`] is dropped — or, if the
//! test binary dies, when the kernel closes the pipe. A component that cannot be built or
//! started makes [`TestEnv::start`] fail with the component's name and log path: a test never
//! passes without the parts it claims to use.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

pub mod kube;
pub mod minio;
pub mod operator;
pub mod robustness;
pub mod wait;

/// Which kind of test host to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// systemd-nspawn containers (seconds to boot, ~20 MiB each).
    Container,
    /// qemu VMs with their own kernel (minutes under TCG emulation).
    Vm,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    pub hosts: usize,
    pub tier: Tier,
    pub kube: bool,
    pub s3: bool,
    /// The OS of each host in order (`testenv.sh --host-os`: bookworm, bullseye, trixie or
    /// nosystemd); hosts past the end of the list are bookworm.
    pub host_os: Vec<&'static str>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            hosts: 0,
            tier: Tier::Container,
            kube: true,
            s3: true,
            host_os: Vec::new(),
        }
    }
}

/// A running environment. Dropping it tears everything down and waits for that to finish.
pub struct TestEnv {
    dir: PathBuf,
    vars: BTreeMap<String, String>,
    hold: Mutex<Option<(Child, ChildStdin)>>,
}

/// The repository root (this crate lives in `<root>/tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

fn script() -> PathBuf {
    repo_root().join("tests/testenv/testenv.sh")
}

impl TestEnv {
    /// Start a fresh environment in its own directory under `/tmp/fleetsnap-testenv`.
    pub fn start(mut opts: Options) -> Result<TestEnv> {
        // FLEETSNAP_TEST_TIER=vm runs a container suite on qemu VMs instead (slow under TCG).
        match std::env::var("FLEETSNAP_TEST_TIER").as_deref() {
            Ok("vm") => opts.tier = Tier::Vm,
            Ok("ct") | Err(_) => {}
            Ok(other) => bail!("FLEETSNAP_TEST_TIER must be ct or vm, not {other:?}"),
        }
        let exe = std::env::current_exe().ok();
        let stem = exe
            .as_deref()
            .and_then(|p| p.file_stem())
            .and_then(|s| s.to_str())
            .unwrap_or("test")
            .split('-')
            .next()
            .unwrap_or("test")
            .to_string();
        let dir = PathBuf::from(format!(
            "/tmp/fleetsnap-testenv/{stem}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir)?;
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .arg("up")
            .arg("--hold")
            .arg("--dir")
            .arg(&dir)
            .arg("--hosts")
            .arg(opts.hosts.to_string())
            .arg("--tier")
            .arg(match opts.tier {
                Tier::Container => "ct",
                Tier::Vm => "vm",
            });
        if !opts.kube {
            cmd.arg("--no-kube");
        }
        if !opts.s3 {
            cmd.arg("--no-s3");
        }
        if !opts.host_os.is_empty() {
            cmd.arg("--host-os").arg(opts.host_os.join(","));
        }
        let log_path = dir.join("testenv.log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("running tests/testenv/testenv.sh")?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        // The script prints exactly one line once everything is up; anything else is a failure.
        match lines.next() {
            Some(Ok(line)) if line.starts_with("TESTENV-READY") => {}
            _ => {
                drop(stdin);
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!(
                    "testenv failed to start (full log: {}):\n{}",
                    log_path.display(),
                    tail(&log, 40)
                );
            }
        }
        let vars = parse_env(&std::fs::read_to_string(dir.join("env"))?);
        Ok(TestEnv {
            dir,
            vars,
            hold: Mutex::new(Some((child, stdin))),
        })
    }

    /// One environment per test binary, started on first use and torn down at process exit.
    /// Every test in the binary must ask for the same options.
    pub fn shared(opts: Options) -> &'static TestEnv {
        static SHARED: OnceLock<TestEnv> = OnceLock::new();
        SHARED.get_or_init(|| {
            let env = TestEnv::start(opts).unwrap_or_else(|e| panic!("{e:#}"));
            // Statics are never dropped; tear down explicitly when the test binary exits.
            extern "C" fn teardown() {
                if let Some(env) = SHARED.get() {
                    env.shutdown();
                }
            }
            unsafe { libc::atexit(teardown) };
            env
        })
    }

    /// Close the hold pipe and wait until the script has stopped everything.
    pub fn shutdown(&self) {
        let taken = self.hold.lock().map(|mut g| g.take()).unwrap_or(None);
        if let Some((mut child, stdin)) = taken {
            drop(stdin);
            let _ = child.wait();
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tier the hosts actually run on (after any `FLEETSNAP_TEST_TIER` override).
    pub fn tier(&self) -> Tier {
        if self.vars.get("HOST_TIER").map(String::as_str) == Some("vm") {
            Tier::Vm
        } else {
            Tier::Container
        }
    }

    /// A variable from the environment file (e.g. `S3_ENDPOINT`, `KUBECONFIG`, `HOST1_PORT`).
    pub fn var(&self, key: &str) -> &str {
        self.vars
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("testenv has no variable {key} (component not started?)"))
    }

    /// Path of a tool from the environment's bin directory (kubectl, mc, restic, restic-0.14, rclone).
    pub fn tool(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }

    /// A command for a tool, with KUBECONFIG and the mc alias `testenv` configured.
    pub fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(self.tool(tool));
        for k in ["KUBECONFIG", "MC_CONFIG_DIR", "MC_HOST_testenv"] {
            if let Some(v) = self.vars.get(k) {
                c.env(k, v);
            }
        }
        c
    }

    /// Run a tool to completion; error (with its stderr) unless it exits 0.
    pub fn run(&self, tool: &str, args: &[&str]) -> Result<String> {
        let out = self.command(tool).args(args).output()?;
        check(&format!("{tool} {}", args.join(" ")), out)
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.run("kubectl", args)
    }

    pub fn mc(&self, args: &[&str]) -> Result<String> {
        self.run("mc", args)
    }

    /// Host names (`host1`..`hostN`).
    pub fn hosts(&self) -> Vec<String> {
        self.vars
            .get("HOSTS")
            .map(|h| h.split_whitespace().map(String::from).collect())
            .unwrap_or_default()
    }

    /// The SSH port on 127.0.0.1 that reaches `host` (e.g. "host2").
    pub fn ssh_port(&self, host: &str) -> u16 {
        let n = host.trim_start_matches("host");
        self.var(&format!("HOST{n}_PORT")).parse().expect("port")
    }

    /// Run a shell command on a test host as root; `stdin` is fed to it (use it for secrets).
    pub fn ssh(&self, host: &str, command: &str, stdin: &[u8]) -> Result<Output> {
        let mut child = Command::new("ssh")
            .args(["-F", self.var("SSH_CONFIG"), host, command])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin)?;
        drop(input);
        Ok(child.wait_with_output()?)
    }

    /// Like [`TestEnv::ssh`] but requires success and returns stdout.
    pub fn ssh_ok(&self, host: &str, command: &str) -> Result<String> {
        let out = self.ssh(host, command, b"")?;
        check(&format!("ssh {host} {command}"), out)
    }

    /// Copy a local file to a path on a host.
    pub fn scp(&self, local: &Path, host: &str, remote: &str) -> Result<()> {
        let out = Command::new("scp")
            .args(["-q", "-F", self.var("SSH_CONFIG")])
            .arg(local)
            .arg(format!("{host}:{remote}"))
            .output()?;
        check("scp", out).map(|_| ())
    }

    /// Power a host off (it becomes unreachable) / boot it again.
    pub fn host_stop(&self, host: &str) -> Result<()> {
        self.script(&["host-stop", host])
    }

    pub fn host_start(&self, host: &str) -> Result<()> {
        self.script(&["host-start", host])
    }

    /// SIGKILL kube-apiserver (a crash: no graceful shutdown, watches cut mid-stream). etcd
    /// and everything stored stay.
    pub fn apiserver_stop(&self) -> Result<()> {
        self.script(&["apiserver-stop"])
    }

    /// Start kube-apiserver again on the same port, certificates and etcd; returns once
    /// `/readyz` answers.
    pub fn apiserver_start(&self) -> Result<()> {
        self.script(&["apiserver-start"])
    }

    /// SIGKILL etcd (kube-apiserver keeps running and answers with errors meanwhile).
    pub fn etcd_stop(&self) -> Result<()> {
        self.script(&["etcd-stop"])
    }

    /// Start etcd again on the same ports and data directory; returns once it is healthy.
    pub fn etcd_start(&self) -> Result<()> {
        self.script(&["etcd-start"])
    }

    fn script(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("bash")
            .arg(script())
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .output()?;
        check(&format!("testenv.sh {}", args.join(" ")), out).map(|_| ())
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.shutdown();
    }
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter_map(|(k, v)| {
            let v = v.strip_prefix('\'')?.strip_suffix('\'')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Turn a finished command into its stdout, or an error carrying its stderr.
pub fn check(what: &str, out: Output) -> Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(anyhow!(
            "`{what}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// helm, built (once, cached) by `tests/testenv/tools.sh`.
pub fn helm() -> Result<PathBuf> {
    let tools = repo_root().join("tests/testenv/tools.sh");
    check(
        "tests/testenv/tools.sh helm",
        Command::new("bash").arg(&tools).arg("helm").output()?,
    )?;
    let dir = check(
        "tests/testenv/tools.sh path helm",
        Command::new("bash")
            .arg(&tools)
            .args(["path", "helm"])
            .output()?,
    )?;
    let bin = PathBuf::from(dir.trim()).join("helm");
    if !bin.exists() {
        bail!("helm is not available at {}", bin.display());
    }
    Ok(bin)
}

/// Path of a binary built from this workspace (e.g. `fleetsnap`), next to the test executable.
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test executable location {}", exe.display()))?;
    let p = profile_dir.join(name);
    if !p.exists() {
        bail!(
            "{name} binary not found at {}: run `cargo build --workspace` before the tests",
            p.display()
        );
    }
    Ok(p)
}

/// A workspace binary built with the release profile, built on demand into the same target
/// directory. Emulated (TCG) VMs run a debug executor an order of magnitude slower still, so
/// VM-tier suites push this one.
pub fn release_bin(package: &str, name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> -> target
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or_else(|| anyhow!("unexpected test executable location {}", exe.display()))?;
    let out = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", package, "--bin", name])
        .env("CARGO_TARGET_DIR", target)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()?;
    check(&format!("cargo build --release -p {package}"), out)?;
    Ok(target.join("release").join(name))
}

/// A workspace binary that only exists with `features` on (`required-features`), built on
/// demand with the debug profile into the same target directory. Only that binary is named,
/// so the regular binaries next to it stay as `cargo build --workspace` made them.
pub fn feature_bin(package: &str, name: &str, features: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/debug/deps/<test> -> target
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or_else(|| anyhow!("unexpected test executable location {}", exe.display()))?;
    feature_bin_in(target, package, name, features)
}

/// [`feature_bin`] into the given target directory (debug profile).
pub fn feature_bin_in(target: &Path, package: &str, name: &str, features: &str) -> Result<PathBuf> {
    let profile_dir = target.join("debug");
    let mut cargo = Command::new(env!("CARGO"));
    // Run from `cargo test`, this process inherits the variables cargo sets for a test
    // (CARGO_PKG_*, CARGO_MANIFEST_*, ...). Some crates' fingerprints track such variables,
    // so passing them on would rebuild part of the tree on every switch between `cargo
    // test` and a direct run. Hand cargo a clean environment.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME")
            || k.starts_with("RUSTC")
            || k == "OUT_DIR"
        {
            cargo.env_remove(k.as_ref());
        }
    }
    // `--workspace` with the feature named as package/feature: dependency features unify
    // exactly as in `cargo build --workspace`, so no dependency is built a second time
    // (`-p package` would unify them for that package alone and rebuild many).
    let feature = format!("{package}/{features}");
    let out = cargo
        .args([
            "build",
            "--workspace",
            "--bin",
            name,
            "--features",
            &feature,
        ])
        .env("CARGO_TARGET_DIR", target)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()?;
    check(
        &format!("cargo build --workspace --bin {name} --features {feature}"),
        out,
    )?;
    Ok(profile_dir.join(name))
}

/// Print how far into the test `what` was reached (`[  12.3s] what`) on stderr, flushed, so
/// a slow or hung suite shows where its time went.
pub fn step(t0: Instant, what: &str) {
    eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let _ = std::io::stderr().flush();
}

/// Read a child's stdout line by line until `pred` matches one, or fail after `timeout`.
pub fn read_until(
    reader: impl Read + Send + 'static,
    timeout: Duration,
    pred: impl Fn(&str) -> bool + Send + 'static,
) -> Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if pred(&line) {
                let _ = tx.send(line);
                return;
            }
        }
    });
    let start = Instant::now();
    rx.recv_timeout(timeout)
        .map_err(|_| anyhow!("no matching line within {:?}", start.elapsed()))
}
