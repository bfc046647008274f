//! Where a kill point's repository lives: a local directory, or a prefix in a MinIO bucket
//! that this module starts and stops. Every point starts from its own copy of the baseline
//! repository; restic lays out a local and an S3 repository the same way, so the S3 copy is
//! the local baseline mirrored into a fresh prefix.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use super::points::Backend;
use super::tools::Tools;
use super::tree;

const BUCKET: &str = "robustness";
const USER: &str = "robustness";
const SECRET: &str = "robustness-secret";
const STARTUP: Duration = Duration::from_secs(60);

/// A MinIO server on 127.0.0.1, killed and reaped when dropped.
pub struct Minio {
    child: Child,
    pub endpoint: String,
    mc: PathBuf,
    mc_config: PathBuf,
}

impl Minio {
    /// Start MinIO with its data under `dir` and wait until it says it serves.
    pub fn start(tools: &Tools, dir: &Path) -> Result<Minio> {
        let data = dir.join("minio-data");
        std::fs::create_dir_all(&data)?;
        let port = free_port()?;
        let console = free_port()?;
        let mut child = Command::new(&tools.minio)
            .arg("server")
            .arg(&data)
            .arg("--address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--console-address")
            .arg(format!("127.0.0.1:{console}"))
            .env("MINIO_ROOT_USER", USER)
            .env("MINIO_ROOT_PASSWORD", SECRET)
            .env("MINIO_BROWSER", "off")
            .env("MINIO_UPDATE", "off")
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("minio.out"))?)
            .stderr(Stdio::piped())
            .spawn()
            .context("starting MinIO")?;
        let endpoint = format!("http://127.0.0.1:{port}");
        // MinIO prints its API address (on stderr) once it accepts requests: wait for that
        // line, not for a fixed time.
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let log = dir.join("minio.log");
        std::thread::spawn(move || {
            let mut f = std::fs::File::create(log).ok();
            let mut ready = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = f.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                if line.contains("API:")
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        let mut m = Minio {
            child,
            endpoint,
            mc: tools.mc.clone(),
            mc_config: dir.join("mc"),
        };
        if rx.recv_timeout(STARTUP).is_err() {
            let err = std::fs::read_to_string(dir.join("minio.log")).unwrap_or_default();
            let _ = m.child.kill();
            bail!("MinIO did not start within {STARTUP:?}: {err}");
        }
        m.mc(&["mb", "--ignore-existing", &format!("fs/{BUCKET}")])?;
        Ok(m)
    }

    /// Run `mc` against this server (alias `fs`).
    pub fn mc(&self, args: &[&str]) -> Result<String> {
        let host = self
            .endpoint
            .replacen("http://", &format!("http://{USER}:{SECRET}@"), 1);
        let out = Command::new(&self.mc)
            .args(["--quiet", "--no-color"])
            .args(args)
            .env("MC_HOST_fs", host)
            .env("MC_CONFIG_DIR", &self.mc_config)
            .stdin(Stdio::null())
            .output()
            .context("running mc")?;
        crate::check(&format!("mc {}", args.join(" ")), out)
    }
}

impl Drop for Minio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One point's repository.
pub struct Repo<'a> {
    pub backend: Backend,
    /// `-r` argument for fleetsnap and restic.
    pub url: String,
    /// Local: the directory. S3: the prefix inside the bucket.
    place: PathBuf,
    minio: Option<&'a Minio>,
}

impl<'a> Repo<'a> {
    /// A fresh copy of the local repository `base`, named `name`.
    pub fn copy_of(
        base: &Path,
        backend: Backend,
        dir: &Path,
        name: &str,
        minio: Option<&'a Minio>,
    ) -> Result<Repo<'a>> {
        match backend {
            Backend::Local => {
                let place = dir.join(name);
                copy_dir(base, &place).with_context(|| {
                    format!("copying {} to {}", base.display(), place.display())
                })?;
                Ok(Repo {
                    backend,
                    url: place.display().to_string(),
                    place,
                    minio: None,
                })
            }
            Backend::S3 => {
                let m = minio.ok_or_else(|| anyhow!("S3 point without a MinIO server"))?;
                let place = PathBuf::from(name);
                m.mc(&[
                    "mirror",
                    &base.display().to_string(),
                    &format!("fs/{BUCKET}/{name}"),
                ])?;
                Ok(Repo {
                    backend,
                    url: format!("s3:{}/{BUCKET}/{name}", m.endpoint),
                    place,
                    minio: Some(m),
                })
            }
        }
    }

    /// Environment both tools need to reach the repository.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![("RESTIC_PASSWORD", super::PASSWORD.to_string())];
        if self.backend == Backend::S3 {
            v.extend([
                ("AWS_ACCESS_KEY_ID", USER.to_string()),
                ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
                ("AWS_REGION", "us-east-1".to_string()),
                ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
            ]);
        }
        v
    }

    /// Lock files in the repository (names that are 64 hex digits, as both tools list them).
    pub fn locks(&self) -> Result<usize> {
        let names: Vec<String> = match self.backend {
            Backend::Local => match std::fs::read_dir(self.place.join("locks")) {
                Ok(d) => d
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e.into()),
            },
            Backend::S3 => {
                let m = self.minio.expect("S3 repo has its server");
                let out = m.mc(&[
                    "ls",
                    &format!("fs/{BUCKET}/{}/locks/", self.place.display()),
                ])?;
                out.lines()
                    .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
                    .collect()
            }
        };
        Ok(names
            .iter()
            .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            .count())
    }

    /// Temporary files (`<name>-tmp-<random>`) in a local repository: what a write killed
    /// between creating its file and renaming it leaves. restic's local backend leaves the
    /// same and nothing removes them; both tools' listings skip them. S3 PUTs leave none.
    pub fn temp_debris(&self) -> usize {
        if self.backend != Backend::Local {
            return 0;
        }
        tree::walk_names(&self.place)
            .iter()
            .filter(|n| n.contains("-tmp-"))
            .count()
    }

    /// Delete the repository (after a passed point; a failed one is kept for inspection).
    pub fn remove(&self) -> Result<()> {
        match self.backend {
            Backend::Local => Ok(tree::remove_all(&self.place)?),
            Backend::S3 => {
                let m = self.minio.expect("S3 repo has its server");
                m.mc(&[
                    "rm",
                    "--recursive",
                    "--force",
                    &format!("fs/{BUCKET}/{}", self.place.display()),
                ])
                .map(|_| ())
            }
        }
    }

    /// Where to look at a kept repository.
    pub fn describe(&self) -> String {
        match self.backend {
            Backend::Local => self.place.display().to_string(),
            Backend::S3 => format!("{} (bucket {BUCKET})", self.url),
        }
    }
}

/// Copy a directory tree (files, directories, symlinks), keeping file modes.
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let ft = e.file_type()?;
        let dst = to.join(e.file_name());
        if ft.is_dir() {
            copy_dir(&e.path(), &dst)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &dst)?;
        } else {
            std::fs::copy(e.path(), &dst)?;
        }
    }
    Ok(())
}
