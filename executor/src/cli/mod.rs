//! Command-line interface with restic's habits (`-r`, RESTIC_* variables, `--json`, exit codes).

pub(crate) mod commands;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::backend::Backend;
use crate::repo::RepoError;

pub const EXIT_OK: i32 = 0;
pub const EXIT_FATAL: i32 = 1;
pub const EXIT_PARTIAL: i32 = 3;
pub const EXIT_NO_REPO: i32 = 10;
pub const EXIT_LOCKED: i32 = 11;
pub const EXIT_WRONG_PASSWORD: i32 = 12;

/// fleetsnap: restic-compatible backups for fleets of Linux hosts.
#[derive(Parser)]
#[command(name = "fleetsnap", version = crate::VERSION)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Args, Clone)]
pub struct Global {
    /// Repository: a local path, or a backend URL (s3:…, rest:…).
    #[arg(
        short = 'r',
        long = "repo",
        env = "RESTIC_REPOSITORY",
        global = true,
        hide_env_values = true
    )]
    pub repo: Option<String>,
    #[arg(long, env = "RESTIC_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    #[arg(long, env = "RESTIC_PASSWORD_COMMAND", global = true)]
    pub password_command: Option<String>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Do not write a lock file, as restic's `--no-lock`: for the read-only commands
    /// (snapshots, ls, dump, restore, stats) with an identity that may read the repository
    /// but not write into it, such as the operator's read-only cross-host restore
    /// credential. Commands that change the repository always lock.
    #[arg(long, global = true)]
    pub no_lock: bool,
    /// Wait up to this long for a conflicting lock to go away instead of failing at once, as
    /// restic's `--retry-lock` (a Go duration: `30s`, `5m`, `1h30m`).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_wait)]
    pub retry_lock: Option<std::time::Duration>,
    /// Backend and password supplied by the caller (`run --config`), bypassing the URL,
    /// environment and password options so secrets never pass through argv or env.
    #[arg(skip)]
    pub preset: Option<Preset>,
}

/// An already-opened backend plus the repository password.
#[derive(Clone)]
pub struct Preset {
    pub backend: Arc<dyn Backend>,
    pub password: Vec<u8>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a repository (succeeds quietly if it already exists).
    Init,
    /// Print repository internals.
    Cat { what: String },
    /// Manage keys (passwords).
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// List snapshots.
    Snapshots {
        #[command(flatten)]
        filter: FilterArgs,
        /// Only the newest snapshot (per host/paths group restic shows; here overall).
        ids: Vec<String>,
    },
    /// Sizes: what a restore would write (restore-size) or what is stored (raw-data).
    Stats {
        /// Snapshot IDs (prefixes) or `latest`; all matching snapshots when none.
        ids: Vec<String>,
        #[arg(long, default_value = "restore-size")]
        mode: String,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// List files in a snapshot.
    Ls {
        snapshot: String,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Write one file of a snapshot to stdout.
    Dump {
        snapshot: String,
        path: String,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Restore a snapshot.
    Restore {
        snapshot: String,
        #[arg(short, long)]
        target: PathBuf,
        #[arg(short = 'i', long)]
        include: Vec<String>,
        #[arg(short = 'e', long)]
        exclude: Vec<String>,
        #[arg(long)]
        verify: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Verify the repository.
    Check {
        #[arg(long)]
        read_data: bool,
        /// `n/m` (bucket by pack ID, like restic) or `x%`.
        #[arg(long)]
        read_data_subset: Option<String>,
        /// Calendar rotation, e.g. `20/week`: week k reads bucket (k mod 20)+1 of 20.
        #[arg(long)]
        read_data_rotate: Option<String>,
    },
    /// Back up files, a stream from stdin, or a command's output.
    Backup(BackupArgs),
    /// Remove snapshots according to a policy.
    Forget(ForgetArgs),
    /// Remove data no snapshot uses (plan, then execute).
    Prune(PruneArgs),
    /// Remove locks (stale ones only unless --remove-all).
    Unlock {
        #[arg(long)]
        remove_all: bool,
    },
    /// Run one job from an operator-rendered config (what the systemd units call).
    Run {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum KeyCmd {
    List,
    Add {
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
    Remove {
        id: String,
    },
    Passwd {
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
}

#[derive(Args, Clone, Default)]
pub struct FilterArgs {
    #[arg(long = "host", short = 'H')]
    pub hosts: Vec<String>,
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    #[arg(long = "path")]
    pub paths: Vec<String>,
}

#[derive(Args)]
pub struct BackupArgs {
    pub paths: Vec<PathBuf>,
    #[arg(short = 'e', long)]
    pub exclude: Vec<String>,
    #[arg(long)]
    pub exclude_file: Vec<PathBuf>,
    #[arg(long)]
    pub exclude_caches: bool,
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    #[arg(long)]
    pub tag: Vec<String>,
    #[arg(long, short = 'H')]
    pub host: Option<String>,
    #[arg(long)]
    pub stdin: bool,
    #[arg(long, default_value = "stdin")]
    pub stdin_filename: String,
    /// Run the command after `--` and store its stdout; a non-zero exit fails the backup.
    #[arg(long)]
    pub stdin_from_command: bool,
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Args)]
pub struct ForgetArgs {
    pub ids: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub keep_last: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_daily: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: u32,
    #[arg(long)]
    pub keep_within: Option<String>,
    #[arg(long)]
    pub keep_tag: Vec<String>,
    #[arg(long, default_value = "host,paths")]
    pub group_by: String,
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    #[arg(long)]
    pub prune: bool,
    /// With no keep rule, remove every snapshot the filters (`--host`, `--tag`) select, as
    /// restic's flag of the same name does; without it an empty policy is refused.
    #[arg(long)]
    pub unsafe_allow_remove_all: bool,
    #[command(flatten)]
    pub limits: PruneLimits,
}

#[derive(Args, Clone)]
pub struct PruneArgs {
    #[command(flatten)]
    pub limits: PruneLimits,
    /// Show the plan without changing anything.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

#[derive(Args, Clone)]
pub struct PruneLimits {
    /// Unused space to tolerate: a percentage (`5%`), a size (`10M`, `2G`) or `unlimited`.
    #[arg(long, default_value = "5%")]
    pub max_unused: String,
    /// Stop repacking after this many bytes of packs (e.g. `500M`).
    #[arg(long)]
    pub max_repack_size: Option<String>,
    /// Grace period: leave packs younger than this alone, judged by the storage's own time
    /// (S3 LastModified, file mtime), e.g. `24h`, `90m`, `2d`; `0` turns it off. Protects a
    /// backup still running whose lock was taken for stale.
    #[arg(long, default_value = "24h")]
    pub keep_young: String,
    /// Count packs whose storage time is unknown (REST servers list none) as old, so the
    /// grace period does not keep them forever.
    #[arg(long)]
    pub unknown_age_is_old: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Repo(#[from] RepoError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Partial(String),
}

impl From<crate::prune::PruneError> for CliError {
    fn from(e: crate::prune::PruneError) -> Self {
        match e {
            crate::prune::PruneError::Repo(r) => CliError::Repo(r),
            other => CliError::Usage(other.to_string()),
        }
    }
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Repo(RepoError::NoRepository(_)) => EXIT_NO_REPO,
            CliError::Repo(RepoError::Locked(_)) => EXIT_LOCKED,
            CliError::Repo(RepoError::LockLost(_)) => EXIT_FATAL,
            CliError::Repo(RepoError::WrongPassword) => EXIT_WRONG_PASSWORD,
            CliError::Partial(_) => EXIT_PARTIAL,
            _ => EXIT_FATAL,
        }
    }
}

pub type CliResult<T> = Result<T, CliError>;

/// A Go duration as restic takes it (`1h30m`, `90s`, `250ms`), at most a week.
pub fn parse_wait(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{s:?} is not a duration such as 30s, 5m or 1h30m");
    let mut total = 0u128;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u128 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        total = total.saturating_add(n.saturating_mul(ms));
        rest = &rest[unit_len..];
    }
    if total > 7 * 24 * 3_600_000 {
        return Err(format!("{s:?} is longer than a week"));
    }
    Ok(std::time::Duration::from_millis(total as u64))
}

impl Global {
    pub fn backend(&self) -> CliResult<Arc<dyn Backend>> {
        if let Some(p) = &self.preset {
            return Ok(p.backend.clone());
        }
        let url = self.repo.as_deref().ok_or_else(|| {
            CliError::Usage("no repository given (use -r/--repo or RESTIC_REPOSITORY)".into())
        })?;
        crate::backend::open(url).map_err(|e| CliError::Repo(e.into()))
    }

    pub fn password(&self) -> CliResult<Vec<u8>> {
        if let Some(p) = &self.preset {
            return Ok(p.password.clone());
        }
        if let Ok(p) = std::env::var("RESTIC_PASSWORD") {
            return Ok(p.into_bytes());
        }
        if let Some(f) = &self.password_file {
            let s = std::fs::read(f)
                .map_err(|e| CliError::Usage(format!("password file {}: {e}", f.display())))?;
            return Ok(strip_newline(s));
        }
        if let Some(cmd) = &self.password_command {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .stderr(std::process::Stdio::inherit())
                .output()
                .map_err(|e| CliError::Usage(format!("password command: {e}")))?;
            if !out.status.success() {
                return Err(CliError::Usage(format!(
                    "password command failed: {}",
                    out.status
                )));
            }
            return Ok(strip_newline(out.stdout));
        }
        Err(CliError::Usage(
            "no password given (set RESTIC_PASSWORD, --password-file or --password-command)".into(),
        ))
    }
}

fn strip_newline(v: Vec<u8>) -> Vec<u8> {
    crate::password::normalize(v)
}

pub fn run(cli: Cli) -> i32 {
    crate::lock::ignore_sighup();
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Fatal: {e}");
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_wait;
    use std::time::Duration;

    #[test]
    fn retry_lock_takes_go_durations() {
        assert_eq!(parse_wait("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_wait("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_wait("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_wait("0s"), Ok(Duration::ZERO));
        for bad in ["", "5", "m", "5x", "-5m", "1.5h"] {
            assert!(parse_wait(bad).is_err(), "{bad:?}");
        }
        assert!(
            parse_wait("200h")
                .unwrap_err()
                .contains("longer than a week")
        );
    }
}
