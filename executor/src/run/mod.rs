//! `fleetsnap run --config FILE`: one job (backup, retention or verify) as rendered by the
//! operator, with secrets from `$CREDENTIALS_DIRECTORY` and a run record for every outcome.
//! The contract is `docs/host-layout.md`.

pub mod config;
mod drill;
pub mod record;
mod terminate;

use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::backend::{self, Backend, Location, S3Backend, S3Options};
use crate::backup::{BackupOptions, BackupResult, Source, SourceCheck};
use crate::cli::{self, CliError, EXIT_FATAL, EXIT_OK, EXIT_PARTIAL};
use crate::pattern::PathMatcher;
use crate::repo::{IndexedRepository, RepoError, Repository};
use config::{JobConfig, JobKind, StdinSource};
use record::RunRecord;

pub use drill::{DrillReport, restore_drill};

/// Variables a stdin-source command must never inherit, even if an administrator put
/// them into the unit by hand: the command may run as another, less trusted user.
const SECRET_ENV: &[&str] = &[
    "RESTIC_PASSWORD",
    "RESTIC_PASSWORD_FILE",
    "RESTIC_PASSWORD_COMMAND",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "RESTIC_REST_USERNAME",
    "RESTIC_REST_PASSWORD",
    "CREDENTIALS_DIRECTORY",
];

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("config {path}: {msg}")]
    Config { path: String, msg: String },
    #[error(
        "credential {id:?}: {msg} (hint: the unit must load it with LoadCredential[Encrypted]=)"
    )]
    Credential { id: String, msg: String },
    #[error("{0}")]
    Repo(#[from] RepoError),
    #[error("{0}")]
    Cli(#[from] CliError),
    #[error("extra_args: {0}")]
    Args(String),
    #[error("stdin source {name:?}: {msg}")]
    Stdin { name: String, msg: String },
    #[error("restore drill: {0}")]
    Drill(String),
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Repo(e) => CliError::Repo(clone_kind(e)).exit_code(),
            RunError::Cli(e) => e.exit_code(),
            _ => EXIT_FATAL,
        }
    }
}

/// Only the variant matters for the exit code; rebuilding it avoids making RepoError Clone.
fn clone_kind(e: &RepoError) -> RepoError {
    match e {
        RepoError::NoRepository(s) => RepoError::NoRepository(s.clone()),
        RepoError::Locked(s) => RepoError::Locked(s.clone()),
        RepoError::WrongPassword => RepoError::WrongPassword,
        other => RepoError::Usage(other.to_string()),
    }
}

/// What a finished job contributes to its run record.
#[derive(Debug, Default)]
struct Outcome {
    exit_code: i32,
    snapshot_id: Option<String>,
    files_new: u64,
    files_changed: u64,
    files_unmodified: u64,
    bytes_added: u64,
    /// Set for partial success (exit 3): the job finished but something was skipped.
    warning: Option<String>,
}

/// Run the job described by the config at `path`; returns the process exit code.
pub fn run_file(path: &Path) -> i32 {
    let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    run_job(path, creds.as_deref(), true)
}

/// [`run_file`] with the credentials directory passed in (tests cannot safely set env), and
/// without a SIGTERM handler (the caller's process is not a systemd job).
pub fn run_file_with(path: &Path, creds: Option<&Path>) -> i32 {
    run_job(path, creds, false)
}

fn run_job(path: &Path, creds: Option<&Path>, under_systemd: bool) -> i32 {
    let started = record::now();
    let t0 = Instant::now();
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            // Without a config there is no record directory to report into.
            eprintln!("fleetsnap run: {e}");
            return EXIT_FATAL;
        }
    };
    eprintln!(
        "fleetsnap run: {} job {:?} on {} (fleetsnap {})",
        cfg.kind.as_str(),
        cfg.policy,
        backend::url::redact(&cfg.repository),
        crate::VERSION
    );
    if under_systemd {
        watch_for_sigterm(&cfg, started, t0);
    }
    let res = execute(&cfg, creds);
    let finished = record::now();
    let mut rec = RunRecord {
        policy: cfg.policy.clone(),
        kind: cfg.kind,
        started,
        finished,
        exit_code: EXIT_OK,
        snapshot_id: None,
        files_new: 0,
        files_changed: 0,
        files_unmodified: 0,
        bytes_added: 0,
        duration_seconds: t0.elapsed().as_secs_f64(),
        error: None,
        credential_expiry: crate::backend::aws_credentials::last_process_expiry()
            .map(chrono::DateTime::<chrono::Utc>::from),
    };
    match res {
        Ok(o) => {
            rec.exit_code = o.exit_code;
            rec.snapshot_id = o.snapshot_id;
            rec.files_new = o.files_new;
            rec.files_changed = o.files_changed;
            rec.files_unmodified = o.files_unmodified;
            rec.bytes_added = o.bytes_added;
            rec.error = o.warning;
        }
        Err(e) => {
            rec.exit_code = e.exit_code();
            rec.error = Some(e.to_string());
        }
    }
    match &rec.error {
        Some(e) => eprintln!(
            "fleetsnap run: {} finished with exit code {}: {e}",
            cfg.kind.as_str(),
            rec.exit_code
        ),
        None => eprintln!(
            "fleetsnap run: {} succeeded in {:.1}s",
            cfg.kind.as_str(),
            rec.duration_seconds
        ),
    }
    match record::write(&rec, Path::new(&cfg.run_record_dir)) {
        Ok(p) => eprintln!("fleetsnap run: record {}", p.display()),
        Err(e) => {
            eprintln!(
                "fleetsnap run: cannot write the run record into {}: {e}",
                cfg.run_record_dir
            );
            // A successful job nobody can see is a failure for the operator.
            if rec.exit_code == EXIT_OK {
                return EXIT_FATAL;
            }
        }
    }
    rec.exit_code
}

/// When systemd stops the job (SIGTERM: `maxRuntime` elapsed, or a shutdown), write a run
/// record that says so and exit; the lock left behind is this host's stale lock, which the
/// next run removes.
fn watch_for_sigterm(cfg: &JobConfig, started: chrono::DateTime<chrono::Utc>, t0: Instant) {
    let (policy, kind, dir) = (cfg.policy.clone(), cfg.kind, cfg.run_record_dir.clone());
    let res = terminate::on_sigterm_call(move || {
        let secs = t0.elapsed().as_secs_f64();
        let rec = RunRecord {
            policy,
            kind,
            started,
            finished: record::now(),
            exit_code: terminate::EXIT_TERMINATED,
            snapshot_id: None,
            files_new: 0,
            files_changed: 0,
            files_unmodified: 0,
            bytes_added: 0,
            duration_seconds: secs,
            error: Some(format!(
                "stopped by SIGTERM after {secs:.0}s: the policy's maxRuntime elapsed, or the \
                 host is shutting down; no snapshot was written"
            )),
            credential_expiry: None,
        };
        eprintln!(
            "fleetsnap run: {}",
            rec.error.as_deref().unwrap_or_default()
        );
        match record::write(&rec, Path::new(&dir)) {
            Ok(p) => eprintln!("fleetsnap run: record {}", p.display()),
            Err(e) => eprintln!("fleetsnap run: cannot write the run record into {dir}: {e}"),
        }
        std::process::exit(terminate::EXIT_TERMINATED);
    });
    if let Err(e) = res {
        eprintln!("fleetsnap run: cannot watch for SIGTERM ({e}); a stopped run leaves no record");
    }
}

fn execute(cfg: &JobConfig, creds: Option<&Path>) -> Result<Outcome, RunError> {
    let wait = lock_wait(cfg);
    let _this_hosts_turn = host_job_lock(&cfg.cache_dir, wait)?;
    let secrets = Secrets::load(cfg, creds)?;
    let backend = open_backend(&cfg.repository, secrets.aws.clone(), secrets.rest.clone())?;
    let global = cli::Global {
        repo: None,
        password_file: None,
        password_command: None,
        json: false,
        no_lock: false,
        retry_lock: Some(wait),
        preset: Some(cli::Preset {
            backend: backend.clone(),
            password: secrets.password.clone(),
        }),
    };
    match cfg.kind {
        JobKind::Backup => run_backup(cfg, backend, &secrets.password),
        JobKind::Retention => {
            clear_own_stale_locks(&Repository::open(backend, &secrets.password)?)?;
            // Keep rules come from the policy; pruning is what makes retention free space.
            let mut argv = vec!["forget".to_string()];
            argv.extend(cfg.extra_args.iter().cloned());
            if !argv.iter().any(|a| a == "--prune") {
                argv.push("--prune".into());
            }
            let code = dispatch(global, argv)?;
            Ok(Outcome {
                exit_code: code,
                ..Default::default()
            })
        }
        JobKind::Verify => run_verify(cfg, global, backend, &secrets.password),
    }
}

/// A killed run of this host's (its PID is gone) must not block every later run until a
/// human unlocks: remove such locks, saying so, before taking ours.
fn clear_own_stale_locks(repo: &Repository) -> Result<(), RunError> {
    for (id, l) in crate::lock::remove_own_stale(repo)? {
        eprintln!(
            "fleetsnap run: removed stale lock {} (PID {}, created {}): that process is gone",
            id.short(),
            l.pid,
            l.time
        );
    }
    Ok(())
}

/// Run a regular subcommand with arguments from the config and our preset repository.
fn dispatch(global: cli::Global, argv: Vec<String>) -> Result<i32, RunError> {
    let mut parsed = cli::Cli::try_parse_from(std::iter::once("fleetsnap".to_string()).chain(argv))
        .map_err(|e| RunError::Args(e.to_string().trim().to_string()))?;
    if matches!(parsed.cmd, cli::Command::Run { .. }) {
        return Err(RunError::Args("`run` cannot be nested".into()));
    }
    parsed.global = global;
    Ok(cli::commands::dispatch(parsed)?)
}

struct Secrets {
    password: Vec<u8>,
    aws: Option<AwsAccess>,
    /// REST basic-auth login (user, password).
    rest: Option<(String, String)>,
}

/// How the S3 backend of a job authenticates, beyond the default chain.
#[derive(Clone)]
enum AwsAccess {
    Keys {
        key: String,
        secret: String,
        token: Option<String>,
    },
    Process(Vec<String>),
}

/// Largest credential file read (a key, a token, a password: a few KiB at most).
const MAX_CREDENTIAL_FILE: u64 = 64 * 1024;

/// A credential the executor opens itself (hosts whose systemd predates `LoadCredential=`).
/// Only a file that no one but root could have written or read is taken: another owner or
/// any group/other permission bit means the secret may have been read or replaced.
fn read_credential_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    // O_NOFOLLOW: a symlink planted in the credential store is refused, not followed.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.uid() != 0 || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} must be owned by root with mode 0600 (it is uid {}, mode {:o}); refusing a \
             secret others could read or replace",
            path.display(),
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    if meta.len() > MAX_CREDENTIAL_FILE {
        return Err(format!(
            "{} is {} bytes, more than the {MAX_CREDENTIAL_FILE} a credential may have",
            path.display(),
            meta.len()
        ));
    }
    let mut out = Vec::new();
    f.take(MAX_CREDENTIAL_FILE)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(out)
}

impl Secrets {
    fn load(cfg: &JobConfig, dir: Option<&Path>) -> Result<Secrets, RunError> {
        let read = |id: &str| -> Result<Vec<u8>, RunError> {
            let err = |msg: String| RunError::Credential {
                id: id.to_string(),
                msg,
            };
            if id.is_empty() || id.contains('/') || id == "." || id == ".." {
                return Err(err("not a valid credential id".into()));
            }
            match (dir, cfg.credential_files.get(id)) {
                (Some(dir), _) => {
                    std::fs::read(dir.join(id)).map_err(|e| err(format!("cannot read: {e}")))
                }
                (None, Some(file)) => read_credential_file(Path::new(file)).map_err(err),
                (None, None) => Err(err(
                    "CREDENTIALS_DIRECTORY is not set and the config names no file for it".into(),
                )),
            }
        };
        let c = &cfg.credentials;
        // Same rule as `--password-file`, so the Secret also opens the repository for restic.
        let password = crate::password::normalize(read(&c.repository_password)?);
        let key = |id: &str| -> Result<String, RunError> {
            let v = read(id)?;
            String::from_utf8(v)
                .map(|s| s.trim().to_string())
                .map_err(|_| RunError::Credential {
                    id: id.into(),
                    msg: "not UTF-8".into(),
                })
        };
        let config_error = |msg: &str| RunError::Config {
            path: "credentials".into(),
            msg: msg.into(),
        };
        let aws = match (&c.aws_access_key_id, &c.aws_secret_access_key) {
            (Some(_), Some(_)) if !cfg.aws_credential_process.is_empty() => {
                return Err(config_error(
                    "both AWS keys and aws_credential_process are given; use one",
                ));
            }
            (Some(k), Some(s)) => Some(AwsAccess::Keys {
                key: key(k)?,
                secret: key(s)?,
                token: c.aws_session_token.as_deref().map(key).transpose()?,
            }),
            (None, None) if c.aws_session_token.is_some() => {
                return Err(config_error(
                    "aws_session_token is given without aws_access_key_id and aws_secret_access_key",
                ));
            }
            (None, None) if !cfg.aws_credential_process.is_empty() => {
                Some(AwsAccess::Process(cfg.aws_credential_process.clone()))
            }
            (None, None) => None,
            _ => {
                return Err(config_error(
                    "aws_access_key_id and aws_secret_access_key come as a pair",
                ));
            }
        };
        let rest = match (&c.rest_username, &c.rest_password) {
            (Some(u), Some(p)) => Some((key(u)?, key(p)?)),
            (None, None) => None,
            _ => {
                return Err(config_error(
                    "rest_username and rest_password come as a pair",
                ));
            }
        };
        Ok(Secrets {
            password,
            aws,
            rest,
        })
    }
}

/// Static S3 keys and a REST login go straight into the backend so they never enter any
/// environment.
fn open_backend(
    url: &str,
    aws: Option<AwsAccess>,
    rest: Option<(String, String)>,
) -> Result<Arc<dyn Backend>, RunError> {
    let be: Result<Arc<dyn Backend>, _> = match (backend::url::parse(url), aws) {
        (Ok(Location::Rest(loc)), None) if rest.is_some() => {
            let login = rest.map(|(u, p)| (u, Some(p)));
            backend::RestBackend::open(backend::with_rest_login(loc, login))
                .map(|b| Arc::new(b) as Arc<dyn Backend>)
        }
        (Ok(_), None) if rest.is_some() => {
            return Err(RunError::Config {
                path: "credentials".into(),
                msg: "a REST login is given but the repository is not rest:".into(),
            });
        }
        (Ok(Location::S3(loc)), Some(access)) => {
            let opts = match access {
                AwsAccess::Keys { key, secret, token } => S3Options {
                    static_credentials: Some((key, secret)),
                    session_token: token,
                    ..S3Options::from_env()
                },
                AwsAccess::Process(command) => S3Options {
                    credential_process: Some(command),
                    ..S3Options::from_env()
                },
            };
            S3Backend::open(loc, opts).map(|b| Arc::new(b) as Arc<dyn Backend>)
        }
        (Ok(_), Some(_)) => {
            return Err(RunError::Config {
                path: "credentials".into(),
                msg: "AWS credentials are given but the repository is not s3:".into(),
            });
        }
        (_, None) => backend::open(url),
        (Err(e), _) => Err(e),
    };
    be.map_err(|e| RunError::Repo(e.into()))
}

fn open_or_init(backend: Arc<dyn Backend>, password: &[u8]) -> Result<Repository, RunError> {
    match Repository::init(backend.clone(), password) {
        Ok(r) => {
            eprintln!(
                "fleetsnap run: created repository {} at {}",
                &r.config().id[..10],
                backend.location()
            );
            Ok(r)
        }
        Err(RepoError::AlreadyExists(_)) => Ok(Repository::open(backend, password)?),
        Err(e) => Err(e.into()),
    }
}

fn lock_wait(cfg: &JobConfig) -> Duration {
    Duration::from_secs(cfg.lock_wait_seconds)
}

/// One job of a host at a time, when the config allows waiting: a host's backup, verify and
/// retention share one repository, where check and prune lock exclusively, so a backup that
/// starts during its own host's verify would otherwise be refused the lock and its day's
/// snapshot lost. Waiting here, on a local `flock`, costs the repository no LIST and keeps the
/// jobs in turn. The wait is bounded by the same limit as the repository lock's.
fn host_job_lock(cache_dir: &str, wait: Duration) -> Result<Option<std::fs::File>, RunError> {
    if cache_dir.is_empty() || wait.is_zero() {
        return Ok(None);
    }
    let path = Path::new(cache_dir).join("jobs.lock");
    let err = |e: std::io::Error| RunError::Config {
        path: path.display().to_string(),
        msg: format!("cannot lock: {e}"),
    };
    std::fs::create_dir_all(cache_dir).map_err(err)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(err)?;
    let start = Instant::now();
    let mut pause = Duration::from_millis(100);
    let mut said = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
        }
        let left = wait.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(RunError::Repo(RepoError::Locked(format!(
                "another fleetsnap job of this host still runs after {}s (it holds {}); \
                 hint: raise the policy's schedule.lockWait, or space the schedules apart",
                start.elapsed().as_secs(),
                path.display()
            ))));
        }
        if !said {
            eprintln!(
                "fleetsnap run: another job of this host is running; waiting up to {}s for it",
                left.as_secs()
            );
            said = true;
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Serialises open-or-init between the jobs of one host. Two first runs starting together
/// on a fresh repository (a host's file and database policies on one schedule) would both
/// initialise it: each writes its own key, the config written last wins, and the repository
/// no longer opens with the other key, for fleetsnap or restic. The jobs of a host share its
/// cache directory, so a `flock` there makes the second one wait and then find the
/// repository. (Hosts sharing one repository are not covered by this.)
fn host_init_lock(cache_dir: &str) -> Result<Option<std::fs::File>, RunError> {
    if cache_dir.is_empty() {
        return Ok(None);
    }
    let path = Path::new(cache_dir).join("init.lock");
    let err = |e: std::io::Error| RunError::Config {
        path: path.display().to_string(),
        msg: format!("cannot lock: {e}"),
    };
    std::fs::create_dir_all(cache_dir).map_err(err)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(err)?;
    // Released when the file is closed, also if the process dies.
    file.lock().map_err(err)?;
    Ok(Some(file))
}

fn run_backup(
    cfg: &JobConfig,
    backend: Arc<dyn Backend>,
    password: &[u8],
) -> Result<Outcome, RunError> {
    if cfg.paths.is_empty() && cfg.stdin.is_empty() {
        return Err(RunError::Config {
            path: cfg.policy.clone(),
            msg: "nothing to back up: no paths and no stdin sources".into(),
        });
    }
    if !cfg.extra_args.is_empty() {
        return Err(RunError::Args(format!(
            "backup jobs take no extra arguments, got {:?}",
            cfg.extra_args
        )));
    }
    let repo = {
        let _host_init = host_init_lock(&cfg.cache_dir)?;
        open_or_init(backend, password)?.with_lock_wait(lock_wait(cfg))
    };
    clear_own_stale_locks(&repo)?;
    let _lock = crate::lock::acquire(&repo, false)?;
    let mut repo = repo.load_index()?;
    let host = if cfg.host.is_empty() {
        crate::repo::hostname()
    } else {
        cfg.host.clone()
    };
    let mut out = Outcome::default();
    let mut warnings = Vec::new();
    // restic stores one source per snapshot; so do we: paths first, then each stream.
    if !cfg.paths.is_empty() {
        let paths = cfg.paths.iter().map(PathBuf::from).collect();
        let res = backup_one(cfg, &mut repo, &host, Source::Paths(paths), None)?;
        if !res.errors.is_empty() {
            for e in &res.errors {
                eprintln!("fleetsnap run: unreadable: {e}");
            }
            warnings.push(format!(
                "{} files or directories could not be read (first: {})",
                res.errors.len(),
                res.errors[0]
            ));
        }
        add(&mut out, &res);
    }
    for s in &cfg.stdin {
        let (source, check) = spawn_stdin(s)?;
        let res = backup_one(cfg, &mut repo, &host, source, Some(check)).map_err(|e| {
            RunError::Stdin {
                name: s.name.clone(),
                msg: e.to_string(),
            }
        })?;
        add(&mut out, &res);
    }
    if !warnings.is_empty() {
        out.exit_code = EXIT_PARTIAL;
        out.warning = Some(warnings.join("; "));
    }
    Ok(out)
}

fn add(out: &mut Outcome, res: &BackupResult) {
    eprintln!(
        "fleetsnap run: snapshot {} saved ({} new, {} changed, {} unmodified files, {} bytes added)",
        res.snapshot_id,
        res.files_new,
        res.files_changed,
        res.files_unmodified,
        res.data_added_packed
    );
    // The record has room for one id: the first snapshot (the paths one when there is one).
    out.snapshot_id
        .get_or_insert_with(|| res.snapshot_id.clone());
    out.files_new += res.files_new;
    out.files_changed += res.files_changed;
    out.files_unmodified += res.files_unmodified;
    out.bytes_added += res.data_added_packed;
}

fn backup_one(
    cfg: &JobConfig,
    repo: &mut IndexedRepository,
    host: &str,
    source: Source,
    check: Option<SourceCheck>,
) -> Result<BackupResult, RunError> {
    let opts = BackupOptions {
        excludes: PathMatcher::new(&cfg.excludes).map_err(|e| RunError::Config {
            path: "excludes".into(),
            msg: e.to_string(),
        })?,
        exclude_patterns: cfg.excludes.clone(),
        exclude_caches: cfg.exclude_caches,
        one_file_system: cfg.one_file_system,
        tags: cfg.tags.clone(),
        host: host.to_string(),
        progress: None,
    };
    Ok(crate::backup::backup_checked(repo, source, opts, check)?)
}

/// The argv a stdin source runs with: `user` wraps it in `runuser`, which drops
/// privileges (the unit grants CAP_SETUID/CAP_SETGID for exactly this).
fn stdin_argv(s: &StdinSource) -> Vec<String> {
    let mut argv = Vec::new();
    if let Some(u) = &s.user {
        argv.extend(["runuser".to_string(), "-u".into(), u.clone(), "--".into()]);
    }
    argv.extend(s.command.iter().cloned());
    argv
}

fn spawn_stdin(s: &StdinSource) -> Result<(Source, SourceCheck), RunError> {
    let argv = stdin_argv(s);
    let err = |msg: String| RunError::Stdin {
        name: s.name.clone(),
        msg,
    };
    let mut cmd = Proc::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for v in SECRET_ENV {
        cmd.env_remove(v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| err(format!("cannot start {:?}: {e}", argv[0])))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let name = s.name.clone();
    let check: SourceCheck = Box::new(move || {
        let st = child.wait().map_err(|e| e.to_string())?;
        if st.success() {
            Ok(())
        } else {
            Err(format!(
                "command of stdin source {name:?} failed ({st}); no snapshot was written for it"
            ))
        }
    });
    Ok((
        Source::Stream {
            filename: s.filename.clone(),
            reader: Box::new(stdout),
        },
        check,
    ))
}

/// Restore drill request: sample size and scratch directory.
type Drill = (usize, PathBuf);

/// Drill options are ours; everything else in extra_args belongs to `check`.
fn split_drill_args(args: &[String]) -> Result<(Vec<String>, Option<Drill>), RunError> {
    let mut rest = Vec::new();
    let mut files = None;
    let mut scratch = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |f: &str| {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| RunError::Args(format!("{f} needs a value")))
        };
        match flag {
            "--restore-drill-files" => {
                let v = value(flag)?;
                files = Some(v.parse::<usize>().map_err(|_| {
                    RunError::Args(format!("--restore-drill-files {v:?}: not a number"))
                })?);
            }
            "--scratch" => scratch = Some(PathBuf::from(value(flag)?)),
            _ => rest.push(a.clone()),
        }
    }
    let drill = match (files, scratch) {
        (Some(0), _) | (None, None) => None,
        (Some(n), Some(dir)) => Some((n, dir)),
        (Some(_), None) => {
            return Err(RunError::Args(
                "--restore-drill-files needs --scratch DIR".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(RunError::Args(
                "--scratch is only used with --restore-drill-files N".into(),
            ));
        }
    };
    Ok((rest, drill))
}

fn run_verify(
    cfg: &JobConfig,
    global: cli::Global,
    backend: Arc<dyn Backend>,
    password: &[u8],
) -> Result<Outcome, RunError> {
    let (check_args, drill) = split_drill_args(&cfg.extra_args)?;
    clear_own_stale_locks(&Repository::open(backend.clone(), password)?)?;
    let mut argv = vec!["check".to_string()];
    argv.extend(check_args);
    let code = dispatch(global, argv)?;
    if let Some((n, scratch)) = drill {
        let repo = Repository::open(backend, password)?.with_lock_wait(lock_wait(cfg));
        let _lock = crate::lock::acquire(&repo, false)?;
        let repo = repo.load_index()?;
        let rep = restore_drill(&repo, n, &scratch).map_err(RunError::Drill)?;
        eprintln!(
            "fleetsnap run: restore drill: {} files, {} bytes from snapshot {} verified",
            rep.files, rep.bytes, rep.snapshot
        );
    }
    Ok(Outcome {
        exit_code: code,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests;
