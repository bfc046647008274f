//! restic-compatible repository locks.
//!
//! Staleness is judged like restic (older than 30 minutes, or same host and dead PID), but we
//! probe liveness with `kill(pid, 0)`: restic sends SIGHUP, which would kill a process that
//! does not ignore it.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::FileType;
use crate::format::time::GoTime;
use crate::id::Id;
use crate::repo::{RepoError, Repository, Result};

const STALE_AFTER_SECS: i64 = 30 * 60;
const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct LockFile {
    pub time: GoTime,
    pub exclusive: bool,
    pub hostname: String,
    pub username: String,
    pub pid: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub uid: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub gid: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl LockFile {
    pub fn new(exclusive: bool) -> LockFile {
        LockFile {
            time: GoTime::now(),
            exclusive,
            hostname: crate::repo::hostname(),
            username: crate::repo::username(),
            pid: std::process::id() as i64,
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
        }
    }

    pub fn is_stale(&self, now: GoTime, local_host: &str) -> bool {
        if now.unix().0 - self.time.unix().0 > STALE_AFTER_SECS {
            return true;
        }
        self.hostname == local_host && !pid_alive(self.pid)
    }

    fn conflicts_with(&self, exclusive: bool) -> bool {
        exclusive || self.exclusive
    }
}

fn pid_alive(pid: i64) -> bool {
    if pid <= 0 || pid > i32::MAX as i64 {
        return false;
    }
    // Signal 0 only checks existence/permission; EPERM means it exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Ignore SIGHUP so restic's liveness probe does not terminate us.
pub fn ignore_sighup() {
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

/// A held lock; refreshed in the background, removed on drop.
pub struct LockGuard {
    current: Arc<Mutex<Id>>,
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<thread::JoinHandle<()>>,
    repo: Repository,
}

fn other_locks(repo: &Repository, own: Option<&Id>) -> Result<Vec<(Id, LockFile)>> {
    let mut out = Vec::new();
    for id in repo.list(FileType::Lock)? {
        if Some(&id) == own {
            continue;
        }
        // A lock removed between listing and reading is simply gone.
        match repo.load_unpacked::<LockFile>(FileType::Lock, &id) {
            Ok(l) => out.push((id, l)),
            Err(RepoError::Backend(e)) if e.is_not_found() => {}
            Err(e) => tracing::warn!("ignoring unreadable lock {}: {e}", id.short()),
        }
    }
    Ok(out)
}

fn conflict_message(id: &Id, l: &LockFile) -> String {
    format!(
        "repository is already locked {}by PID {} on {} by {} (UID {}, GID {})\nlock was created at {} (lock {})\n\
         hint: if that process is gone, run `fleetsnap unlock` (or `restic unlock`)",
        if l.exclusive { "exclusively " } else { "" },
        l.pid,
        l.hostname,
        l.username,
        l.uid,
        l.gid,
        l.time,
        id.short()
    )
}

/// What a reader that may not write (`--no-lock`) still does: refuse while another process
/// holds an exclusive lock (a prune may be deleting the data it is about to read), without
/// writing a lock of its own.
pub fn check_no_exclusive(repo: &Repository) -> Result<()> {
    for (id, l) in other_locks(repo, None)? {
        if l.exclusive {
            return Err(RepoError::Locked(conflict_message(&id, &l)));
        }
    }
    Ok(())
}

pub fn acquire(repo: &Repository, exclusive: bool) -> Result<LockGuard> {
    for (id, l) in other_locks(repo, None)? {
        if l.conflicts_with(exclusive) {
            return Err(RepoError::Locked(conflict_message(&id, &l)));
        }
    }
    let own = repo.save_unpacked(FileType::Lock, &LockFile::new(exclusive))?;
    // Another process may have raced us between listing and writing: check again.
    for (id, l) in other_locks(repo, Some(&own))? {
        if l.conflicts_with(exclusive) {
            let _ = repo.backend().remove(FileType::Lock, &own.to_hex());
            return Err(RepoError::Locked(conflict_message(&id, &l)));
        }
    }
    let current = Arc::new(Mutex::new(own));
    let (tx, rx) = mpsc::channel::<()>();
    let r = repo.clone();
    let cur = current.clone();
    let refresher = thread::spawn(move || {
        // recv_timeout doubles as the refresh timer and the stop signal.
        while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(REFRESH_EVERY) {
            match r.save_unpacked(FileType::Lock, &LockFile::new(exclusive)) {
                Ok(new) => {
                    let old = std::mem::replace(&mut *cur.lock().expect("poisoned"), new);
                    let _ = r.backend().remove(FileType::Lock, &old.to_hex());
                }
                Err(e) => tracing::warn!("refreshing lock failed: {e}"),
            }
        }
    });
    Ok(LockGuard {
        current,
        stop: Some(tx),
        refresher: Some(refresher),
        repo: repo.clone(),
    })
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
        let id = *self.current.lock().expect("poisoned");
        if let Err(e) = self.repo.backend().remove(FileType::Lock, &id.to_hex()) {
            tracing::warn!("removing lock {}: {e}", id.short());
        }
    }
}

/// Remove stale locks (or all with `all`); returns the removed IDs.
pub fn unlock(repo: &Repository, all: bool) -> Result<Vec<Id>> {
    let now = GoTime::now();
    let host = crate::repo::hostname();
    let mut removed = Vec::new();
    for id in repo.list(FileType::Lock)? {
        let stale = match repo.load_unpacked::<LockFile>(FileType::Lock, &id) {
            Ok(l) => l.is_stale(now, &host),
            Err(_) => false,
        };
        if all || stale {
            repo.backend().remove(FileType::Lock, &id.to_hex())?;
            removed.push(id);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::mem::MemBackend;

    #[test]
    fn exclusive_conflicts_and_release() {
        let r = Repository::init(Arc::new(MemBackend::new()), b"pw").unwrap();
        let a = acquire(&r, false).unwrap();
        let b = acquire(&r, false).unwrap();
        assert!(matches!(acquire(&r, true), Err(RepoError::Locked(_))));
        drop(a);
        drop(b);
        assert!(r.list(FileType::Lock).unwrap().is_empty());
        let x = acquire(&r, true).unwrap();
        assert!(acquire(&r, false).is_err());
        drop(x);
    }

    #[test]
    fn staleness_and_unlock() {
        let r = Repository::init(Arc::new(MemBackend::new()), b"pw").unwrap();
        let host = crate::repo::hostname();
        let mut dead = LockFile::new(true);
        dead.pid = i32::MAX as i64; // no such process
        let mut old = LockFile::new(false);
        old.hostname = "elsewhere".into();
        old.time = GoTime::from_unix(old.time.unix().0 - 3600, 0);
        let live = LockFile::new(false);
        assert!(dead.is_stale(GoTime::now(), &host));
        assert!(old.is_stale(GoTime::now(), &host));
        assert!(!live.is_stale(GoTime::now(), &host));
        r.save_unpacked(FileType::Lock, &dead).unwrap();
        r.save_unpacked(FileType::Lock, &old).unwrap();
        r.save_unpacked(FileType::Lock, &live).unwrap();
        // Stale locks still block, as in restic, until unlocked.
        assert!(acquire(&r, false).is_err());
        assert_eq!(unlock(&r, false).unwrap().len(), 2);
        assert_eq!(r.list(FileType::Lock).unwrap().len(), 1);
        assert_eq!(unlock(&r, true).unwrap().len(), 1);
    }
}
