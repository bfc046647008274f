//! restic-compatible repository locks.
//!
//! Staleness is judged like restic (older than 30 minutes, or same host and dead PID), but we
//! probe liveness with `kill(pid, 0)`: restic sends SIGHUP, which would kill a process that
//! does not ignore it.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
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

/// How long lock operations wait, as restic does it. Injectable so tests need not wait
/// minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockTiming {
    /// Pause between writing our lock and looking for others again (restic's
    /// `waitBeforeLockCheck`): lets a competitor's lock, written just before ours but not yet
    /// listed by an eventually consistent store, show up.
    pub settle: Duration,
    /// How often a lock we hold is refreshed (restic: 5 minutes).
    pub refresh_every: Duration,
    /// With no successful refresh for this long, the operation is cancelled: its lock could
    /// soon look stale (30 minutes) to others. restic: 30 − 7.5 = 22.5 minutes.
    pub give_up_after: Duration,
    /// Reads of other locks that fail are retried this many times in all …
    pub attempts: u32,
    /// … after this pause, doubling each time.
    pub retry_delay: Duration,
    /// With a lock wait ([`Repository::with_lock_wait`]), the first pause before trying a
    /// conflicting lock again, doubling up to `wait_max` (restic's `--retry-lock`: 5 s to
    /// 1 min): a long wait costs a LIST a minute, not a LIST a second.
    pub wait_first: Duration,
    pub wait_max: Duration,
}

impl Default for LockTiming {
    fn default() -> Self {
        LockTiming {
            settle: Duration::from_millis(200),
            refresh_every: REFRESH_EVERY,
            give_up_after: Duration::from_secs(STALE_AFTER_SECS as u64) - REFRESH_EVERY * 3 / 2,
            attempts: 4,
            retry_delay: Duration::from_millis(500),
            wait_first: Duration::from_secs(5),
            wait_max: Duration::from_secs(60),
        }
    }
}

/// Whether one held lock is still ours. Shared between the refresher and every clone of the
/// repository it was taken on (see [`Repository::check_lock`]).
#[derive(Default)]
pub struct LeaseState {
    lost: Mutex<Option<String>>,
    changed: Condvar,
}

impl LeaseState {
    fn lose(&self, why: String) {
        tracing::error!("{why}");
        *self.lost.lock().expect("poisoned") = Some(why);
        self.changed.notify_all();
    }

    /// Why the lock is lost, if it is.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().expect("poisoned").clone()
    }
}

/// The leases held on one repository (all its clones share it).
#[derive(Default)]
pub struct Leases(Mutex<Vec<Arc<LeaseState>>>);

impl Leases {
    /// `Err(LockLost)` once any lock held on this repository is lost. Long operations call
    /// this at their safe points, and before anything that deletes.
    pub fn check(&self) -> Result<()> {
        for l in self.0.lock().expect("poisoned").iter() {
            if let Some(why) = l.lost() {
                return Err(RepoError::LockLost(why));
            }
        }
        Ok(())
    }

    fn add(&self, l: Arc<LeaseState>) {
        self.0.lock().expect("poisoned").push(l);
    }

    fn remove(&self, l: &Arc<LeaseState>) {
        self.0
            .lock()
            .expect("poisoned")
            .retain(|x| !Arc::ptr_eq(x, l));
    }
}

/// A held lock; refreshed in the background, removed on drop.
pub struct LockGuard {
    current: Arc<Mutex<Id>>,
    state: Arc<LeaseState>,
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<thread::JoinHandle<()>>,
    repo: Repository,
}

impl LockGuard {
    /// Why the lock is lost, if it is.
    pub fn lost(&self) -> Option<String> {
        self.state.lost()
    }

    /// Wait up to `timeout` for the lock to be lost; true if it is.
    pub fn wait_lost(&self, timeout: Duration) -> bool {
        let g = self.state.lost.lock().expect("poisoned");
        let (g, _) = self
            .state
            .changed
            .wait_timeout_while(g, timeout, |l| l.is_none())
            .expect("poisoned");
        g.is_some()
    }
}

/// Why another lock file could not be taken into account.
fn unreadable(id: &Id, e: &RepoError) -> String {
    format!(
        "repository is locked: lock {} cannot be read ({e}); it may belong to a running \
         operation, so it counts as a lock\nhint: if you are sure nothing else uses the \
         repository, run `fleetsnap unlock --remove-all` (or `restic unlock --remove-all`)",
        id.short()
    )
}

/// The first lock that conflicts with ours. A lock that cannot be read, decrypted or parsed
/// counts as a conflict (restic: "if we cannot load a lock then it is unclear whether it
/// can be ignored"); reads are retried a few times first. Only a lock that is gone by the
/// time we read it (deleted in the meantime) or an empty file is no lock.
fn conflicting_lock(
    repo: &Repository,
    own: Option<&Id>,
    exclusive: bool,
    timing: &LockTiming,
) -> Result<Option<String>> {
    let mut delay = timing.retry_delay;
    let mut fine: std::collections::HashSet<Id> = Default::default();
    let mut last = None;
    for attempt in 0..timing.attempts.max(1) {
        if attempt > 0 {
            thread::sleep(delay);
            delay *= 2;
        }
        last = None;
        for f in repo.backend().list(FileType::Lock)? {
            let Ok(id) = f.name.parse::<Id>() else {
                continue;
            };
            // An empty file is no lock: a failed upload on some stores leaves one behind, and
            // restic ignores them too (0.15.2).
            if Some(&id) == own || fine.contains(&id) || f.size == 0 {
                continue;
            }
            match repo.load_unpacked::<LockFile>(FileType::Lock, &id) {
                Ok(l) if l.conflicts_with(exclusive) => {
                    return Ok(Some(conflict_message(&id, &l)));
                }
                Ok(_) => {
                    fine.insert(id);
                }
                Err(RepoError::Backend(e)) if e.is_not_found() => {}
                // Not a lock anyone wrote by accident: refuse to go on, naming it, rather
                // than retry reading a file planted to be read.
                Err(e @ RepoError::TooLarge { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!("reading lock {}: {e}", id.short());
                    last = Some(unreadable(&id, &e));
                }
            }
        }
        if last.is_none() {
            return Ok(None);
        }
    }
    Ok(last)
}

fn conflict_message(id: &Id, l: &LockFile) -> String {
    format!(
        "repository is already locked {}by PID {} on {} by {} (UID {}, GID {})\nlock was created at {} (lock {})\n\
         hint: if that process is gone, run `fleetsnap unlock` (or `restic unlock`)",
        if l.exclusive { "exclusively " } else { "" },
        l.pid,
        crate::run::record::truncate_text(&l.hostname, 255),
        crate::run::record::truncate_text(&l.username, 255),
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
    // What a shared lock would conflict with: exclusive locks, and locks that cannot be read.
    let timing = LockTiming::default();
    waiting(repo, &timing, || {
        match conflicting_lock(repo, None, false, &timing)? {
            Some(m) => Err(RepoError::Locked(m)),
            None => Ok(()),
        }
    })
}

/// Runs `attempt` until it is not refused a lock or the repository's lock wait is up; the
/// refusal then says how long it waited.
fn waiting<T>(
    repo: &Repository,
    timing: &LockTiming,
    mut attempt: impl FnMut() -> Result<T>,
) -> Result<T> {
    let limit = repo.lock_wait();
    let start = std::time::Instant::now();
    let mut pause = timing.wait_first;
    let mut said = false;
    loop {
        let msg = match attempt() {
            Err(RepoError::Locked(m)) => m,
            other => return other,
        };
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            if limit.is_zero() {
                return Err(RepoError::Locked(msg));
            }
            return Err(RepoError::Locked(format!(
                "{msg}\n(gave up after waiting {}s for the lock)",
                start.elapsed().as_secs()
            )));
        }
        if !said {
            eprintln!(
                "repository is locked, waiting up to {}s for the lock",
                left.as_secs()
            );
            said = true;
        }
        thread::sleep(pause.min(left));
        pause = (pause * 2).min(timing.wait_max);
    }
}

pub fn acquire(repo: &Repository, exclusive: bool) -> Result<LockGuard> {
    acquire_with(repo, exclusive, &LockTiming::default())
}

pub fn acquire_with(repo: &Repository, exclusive: bool, timing: &LockTiming) -> Result<LockGuard> {
    waiting(repo, timing, || try_acquire(repo, exclusive, timing))
}

fn try_acquire(repo: &Repository, exclusive: bool, timing: &LockTiming) -> Result<LockGuard> {
    if let Some(m) = conflicting_lock(repo, None, exclusive, timing)? {
        return Err(RepoError::Locked(m));
    }
    let own = repo.save_unpacked(FileType::Lock, &LockFile::new(exclusive))?;
    // Another process may have raced us between listing and writing: give its lock time to
    // become visible, then check again.
    thread::sleep(timing.settle);
    match conflicting_lock(repo, Some(&own), exclusive, timing) {
        Ok(None) => {}
        Ok(Some(m)) => {
            let _ = repo.backend().remove(FileType::Lock, &own.to_hex());
            return Err(RepoError::Locked(m));
        }
        Err(e) => {
            let _ = repo.backend().remove(FileType::Lock, &own.to_hex());
            return Err(e);
        }
    }
    let current = Arc::new(Mutex::new(own));
    let state = Arc::new(LeaseState::default());
    repo.leases().add(state.clone());
    let (tx, rx) = mpsc::channel::<()>();
    let r = repo.clone();
    let cur = current.clone();
    let st = state.clone();
    let timing = *timing;
    let refresher = thread::spawn(move || refresh_loop(&r, exclusive, &cur, &st, &rx, &timing));
    Ok(LockGuard {
        current,
        state,
        stop: Some(tx),
        refresher: Some(refresher),
        repo: repo.clone(),
    })
}

/// Refresh our lock every `refresh_every` until told to stop. When no refresh has succeeded
/// for `give_up_after`, or our lock file has disappeared (someone took it for stale and
/// removed it), the lease is lost: the operation must stop before others act on it.
fn refresh_loop(
    r: &Repository,
    exclusive: bool,
    cur: &Mutex<Id>,
    state: &LeaseState,
    rx: &mpsc::Receiver<()>,
    timing: &LockTiming,
) {
    let mut last_ok = std::time::Instant::now();
    let mut wait = timing.refresh_every;
    loop {
        // recv_timeout doubles as the refresh timer and the stop signal.
        match rx.recv_timeout(wait) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let old = *cur.lock().expect("poisoned");
        match r.backend().read(FileType::Lock, &old.to_hex()) {
            Err(e) if e.is_not_found() => {
                state.lose(format!(
                    "our lock {} was removed from the repository (taken for stale?); \
                     the operation was cancelled",
                    old.short()
                ));
                return;
            }
            // Could not tell: the refresh below decides.
            _ => {}
        }
        match r.save_unpacked(FileType::Lock, &LockFile::new(exclusive)) {
            Ok(new) => {
                *cur.lock().expect("poisoned") = new;
                let _ = r.backend().remove(FileType::Lock, &old.to_hex());
                last_ok = std::time::Instant::now();
                wait = timing.refresh_every;
            }
            Err(e) => {
                let since = last_ok.elapsed();
                if since >= timing.give_up_after {
                    state.lose(format!(
                        "could not refresh the repository lock for {}s (last error: {e}); \
                         the operation was cancelled before the lock could be taken for stale",
                        since.as_secs()
                    ));
                    return;
                }
                tracing::warn!("refreshing lock failed: {e}");
                // Try again at the next tick, or just at the deadline.
                wait = timing.refresh_every.min(timing.give_up_after - since);
            }
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
        self.repo.leases().remove(&self.state);
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

/// Remove the locks this host left behind: written under our hostname and stale by restic's
/// rule (the PID is gone, or it has not been refreshed for 30 minutes). The scheduled job
/// runs this before it locks: a run killed by `RuntimeMaxSec=`, the OOM killer or a reboot
/// would otherwise block every later run until someone types `unlock`. Locks of other hosts
/// (the operator's maintenance) and locks we cannot read are left alone.
pub fn remove_own_stale(repo: &Repository) -> Result<Vec<(Id, LockFile)>> {
    let now = GoTime::now();
    let host = crate::repo::hostname();
    let mut removed = Vec::new();
    for id in repo.list(FileType::Lock)? {
        let Ok(l) = repo.load_unpacked::<LockFile>(FileType::Lock, &id) else {
            continue;
        };
        if l.hostname == host && l.is_stale(now, &host) {
            match repo.backend().remove(FileType::Lock, &id.to_hex()) {
                Ok(()) => removed.push((id, l)),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
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

    /// Lock reads fail with `kind`; everything else goes to the wrapped backend.
    struct LockReadsFail {
        inner: Arc<MemBackend>,
        kind: crate::backend::BackendErrorKind,
    }

    impl crate::backend::Backend for LockReadsFail {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn create(&self) -> crate::backend::BackendResult<()> {
            self.inner.create()
        }
        fn list(
            &self,
            t: FileType,
        ) -> crate::backend::BackendResult<Vec<crate::backend::FileInfo>> {
            self.inner.list(t)
        }
        fn read(&self, t: FileType, name: &str) -> crate::backend::BackendResult<Vec<u8>> {
            if t == FileType::Lock {
                return Err(crate::backend::BackendError::new(
                    self.kind,
                    "read",
                    format!("locks/{name}"),
                    self.location(),
                    "injected",
                ));
            }
            self.inner.read(t, name)
        }
        // Bounded reads are how locks are loaded: they fail the same way.
        fn read_prefix(
            &self,
            t: FileType,
            name: &str,
            max: u64,
        ) -> crate::backend::BackendResult<Vec<u8>> {
            if t == FileType::Lock {
                return self.read(t, name);
            }
            self.inner.read_prefix(t, name, max)
        }
        fn read_range(
            &self,
            t: FileType,
            n: &str,
            o: u64,
            l: u64,
        ) -> crate::backend::BackendResult<Vec<u8>> {
            self.inner.read_range(t, n, o, l)
        }
        fn write(&self, t: FileType, name: &str, data: &[u8]) -> crate::backend::BackendResult<()> {
            self.inner.write(t, name, data)
        }
        fn remove(&self, t: FileType, name: &str) -> crate::backend::BackendResult<()> {
            self.inner.remove(t, name)
        }
    }

    #[test]
    fn unreadable_or_garbled_locks_count_as_locked() {
        use crate::backend::BackendErrorKind;
        let mem = Arc::new(MemBackend::new());
        let r = Repository::init(mem.clone(), b"pw").unwrap();
        // Someone else's shared lock, which this process cannot read right now.
        r.save_unpacked(FileType::Lock, &LockFile::new(false))
            .unwrap();
        let flaky = Repository::open(
            Arc::new(LockReadsFail {
                inner: mem.clone(),
                kind: BackendErrorKind::Transient,
            }),
            b"pw",
        )
        .unwrap();
        let e = acquire(&flaky, true)
            .err()
            .expect("acquire(true) must fail");
        assert!(matches!(e, RepoError::Locked(_)), "{e}");
        assert!(
            r.list(FileType::Lock).unwrap().len() == 1,
            "a refused acquire leaves no lock behind"
        );

        // A lock deleted between listing and reading is gone: not a conflict.
        let gone = Repository::open(
            Arc::new(LockReadsFail {
                inner: mem.clone(),
                kind: BackendErrorKind::NotFound,
            }),
            b"pw",
        )
        .unwrap();
        drop(acquire(&gone, true).unwrap());

        // Garbage, and a file that is not what its name says, both block.
        for (name, data) in [
            (Id::hash(b"garbage").to_hex(), b"garbage".to_vec()),
            (Id::hash(b"x").to_hex(), b"not x".to_vec()),
        ] {
            let mem = Arc::new(MemBackend::new());
            let r = Repository::init(mem.clone(), b"pw").unwrap();
            mem.put_raw(FileType::Lock, &name, data);
            let quick = LockTiming {
                retry_delay: Duration::from_millis(1),
                ..Default::default()
            };
            let e = acquire_with(&r, false, &quick)
                .err()
                .expect("a garbled lock must block");
            assert!(matches!(e, RepoError::Locked(_)), "{e}");
            assert!(e.to_string().contains("cannot be read"), "{e}");
        }
        // An empty file is what a failed upload leaves: ignored, as restic does.
        let mem = Arc::new(MemBackend::new());
        let r = Repository::init(mem.clone(), b"pw").unwrap();
        mem.put_raw(FileType::Lock, &Id::hash(b"").to_hex(), Vec::new());
        drop(acquire(&r, true).unwrap());
    }

    #[test]
    fn a_lock_wait_waits_out_a_conflicting_lock_and_then_says_how_long() {
        let mem = Arc::new(MemBackend::new());
        let r = Repository::init(mem.clone(), b"pw").unwrap();
        let quick = LockTiming {
            settle: Duration::ZERO,
            wait_first: Duration::from_millis(20),
            wait_max: Duration::from_millis(80),
            ..Default::default()
        };
        let holder = acquire_with(&r, true, &quick).unwrap();
        // Without a wait: refused at once, as restic without --retry-lock.
        let e = acquire_with(&r, false, &quick).err().unwrap();
        assert!(matches!(e, RepoError::Locked(_)) && !e.to_string().contains("gave up"));
        // With one: taken as soon as the holder lets go.
        let waiting_repo = r.clone().with_lock_wait(Duration::from_secs(30));
        let taken = thread::scope(|s| {
            let w = s.spawn(|| acquire_with(&waiting_repo, false, &quick).map(drop));
            thread::sleep(Duration::from_millis(300));
            assert!(
                !w.is_finished(),
                "took a shared lock beside an exclusive one"
            );
            drop(holder);
            w.join().unwrap()
        });
        taken.unwrap();
        // A lock that stays: refused when the wait is up, saying so.
        let _holder = acquire_with(&r, true, &quick).unwrap();
        let short = r.clone().with_lock_wait(Duration::from_millis(200));
        let e = acquire_with(&short, false, &quick).err().unwrap();
        assert!(e.to_string().contains("gave up after waiting"), "{e}");
        assert!(matches!(
            check_no_exclusive(&short),
            Err(RepoError::Locked(_))
        ));
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

    #[test]
    fn a_lock_removed_by_someone_else_is_lost() {
        let mem = Arc::new(MemBackend::new());
        let r = Repository::init(mem.clone(), b"pw").unwrap();
        let timing = LockTiming {
            settle: Duration::ZERO,
            refresh_every: Duration::from_millis(10),
            give_up_after: Duration::from_secs(60),
            attempts: 1,
            retry_delay: Duration::ZERO,
            ..Default::default()
        };
        let g = acquire_with(&r, false, &timing).unwrap();
        assert_eq!(r.list(FileType::Lock).unwrap().len(), 1);
        // `restic unlock` on a host that took it for stale; again if a refresh slipped in
        // between.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !g.wait_lost(Duration::from_millis(20)) {
            for id in r.list(FileType::Lock).unwrap() {
                r.backend().remove(FileType::Lock, &id.to_hex()).unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "loss never noticed");
        }
        assert!(g.lost().unwrap().contains("was removed"), "{:?}", g.lost());
        assert!(matches!(r.check_lock(), Err(RepoError::LockLost(_))));
        drop(g);
        r.check_lock().unwrap();
    }
}
