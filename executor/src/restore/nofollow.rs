//! Filesystem calls relative to directory descriptors that never follow a symlink.
//!
//! A snapshot is written by the host it came from, which may be compromised: a symlink it
//! holds must never be a way out of the restore target. Every entry is therefore created or
//! changed by name inside an already opened directory (`*at` calls), with the last
//! component never followed, and a directory is only entered through `O_NOFOLLOW`, so every
//! descriptor held below the target is a real directory below the target.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

const DIR_FLAGS: libc::c_int =
    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `check` passed, so `fd` is a fresh descriptor nobody else owns.
    check(fd).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// A name from a tree as a C string; names were checked for NUL before.
pub fn cname(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

/// An open directory that entries are created in and changed through.
pub struct Dir(OwnedFd);

impl Dir {
    /// The restore target itself. The user named it, so symlinks on its path are theirs and
    /// are followed; below it nothing is.
    pub fn open_target(path: &Path) -> io::Result<Dir> {
        let p = cname(path.as_os_str().as_bytes())?;
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
        // SAFETY: `p` is a valid C string for the duration of the call.
        owned(unsafe { libc::open(p.as_ptr(), flags) }).map(Dir)
    }

    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// The subdirectory `name`, only if it is a real directory (a symlink to one is not).
    pub fn open_dir(&self, name: &CStr) -> io::Result<Dir> {
        // SAFETY: valid descriptor and C string.
        owned(unsafe { libc::openat(self.fd(), name.as_ptr(), DIR_FLAGS) }).map(Dir)
    }

    /// The subdirectory `name`, created if missing. Whatever else is there (a file, a symlink
    /// a previous restore left) is removed first, as restic's `ensureDir` does; an existing
    /// directory is reused. Returns whether it was created.
    pub fn ensure_dir(&self, name: &CStr) -> io::Result<(Dir, bool)> {
        // 0700 until the directory's own mode is set after its contents.
        // SAFETY (all calls below): valid descriptor and C string.
        let created = match check(unsafe { libc::mkdirat(self.fd(), name.as_ptr(), 0o700) }) {
            Ok(_) => true,
            Err(e) if errno(&e) == libc::EEXIST => false,
            Err(e) => return Err(e),
        };
        match self.open_dir(name) {
            Ok(d) => Ok((d, created)),
            Err(e) if !created && matches!(errno(&e), libc::ENOTDIR | libc::ELOOP) => {
                check(unsafe { libc::unlinkat(self.fd(), name.as_ptr(), 0) })?;
                check(unsafe { libc::mkdirat(self.fd(), name.as_ptr(), 0o700) })?;
                Ok((self.open_dir(name)?, true))
            }
            Err(e) => Err(e),
        }
    }

    /// Remove the non-directory `name` (a symlink itself, not what it points at).
    pub fn remove(&self, name: &CStr) -> io::Result<()> {
        // SAFETY: valid descriptor and C string.
        check(unsafe { libc::unlinkat(self.fd(), name.as_ptr(), 0) }).map(drop)
    }

    /// Remove a directory this restore made and then found nothing to put in.
    pub fn remove_empty_dir(&self, name: &CStr) -> io::Result<()> {
        // SAFETY: valid descriptor and C string.
        check(unsafe { libc::unlinkat(self.fd(), name.as_ptr(), libc::AT_REMOVEDIR) }).map(drop)
    }

    /// Run `make`, which creates `name` exclusively; if something is in the way, remove it
    /// (without following it) and run `make` once more. An empty directory in the way is
    /// removed too; a non-empty one is refused, as restic does without `--delete`.
    fn replacing<T>(&self, name: &CStr, make: impl Fn() -> io::Result<T>) -> io::Result<T> {
        match make() {
            Err(e) if errno(&e) == libc::EEXIST => {}
            r => return r,
        }
        // SAFETY (both): valid descriptor and C string.
        if let Err(e) = check(unsafe { libc::unlinkat(self.fd(), name.as_ptr(), 0) }) {
            if errno(&e) != libc::EISDIR {
                return Err(e);
            }
            let r = check(unsafe { libc::unlinkat(self.fd(), name.as_ptr(), libc::AT_REMOVEDIR) });
            if let Err(e) = r {
                if matches!(errno(&e), libc::ENOTEMPTY | libc::EEXIST) {
                    return Err(io::Error::other(
                        "a non-empty directory is in the way (not replaced)",
                    ));
                }
                return Err(e);
            }
        }
        make()
    }

    /// A new, empty regular file `name`, open for writing; what was there is replaced.
    pub fn create_file(&self, name: &CStr) -> io::Result<File> {
        // O_EXCL never follows a symlink and never opens an existing file, so no write can
        // reach a file that a link or an old hardlink shares with something outside.
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        self.replacing(name, || {
            // SAFETY: valid descriptor and C string.
            owned(unsafe { libc::openat(self.fd(), name.as_ptr(), flags, 0o600) }).map(File::from)
        })
    }

    pub fn symlink(&self, target: &CStr, name: &CStr) -> io::Result<()> {
        self.replacing(name, || {
            // SAFETY: valid descriptor and C strings.
            check(unsafe { libc::symlinkat(target.as_ptr(), self.fd(), name.as_ptr()) }).map(drop)
        })
    }

    pub fn mkfifo(&self, name: &CStr) -> io::Result<()> {
        self.replacing(name, || {
            // SAFETY: valid descriptor and C string.
            check(unsafe { libc::mkfifoat(self.fd(), name.as_ptr(), 0o600) }).map(drop)
        })
    }

    pub fn mknod(&self, name: &CStr, kind: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
        self.replacing(name, || {
            // SAFETY: valid descriptor and C string.
            check(unsafe { libc::mknodat(self.fd(), name.as_ptr(), kind | 0o600, dev) }).map(drop)
        })
    }

    /// Link `from_name` in `from` as `name` here. linkat without AT_SYMLINK_FOLLOW links
    /// the entry itself, never what a symlink points at.
    pub fn hard_link(&self, from: &Dir, from_name: &CStr, name: &CStr) -> io::Result<()> {
        self.replacing(name, || {
            // SAFETY: valid descriptors and C strings.
            let r =
                unsafe { libc::linkat(from.fd(), from_name.as_ptr(), self.fd(), name.as_ptr(), 0) };
            check(r).map(drop)
        })
    }

    /// Type and inode of `name` itself (a symlink is reported as one).
    pub fn lstat(&self, name: &CStr) -> io::Result<(libc::mode_t, u64)> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: valid descriptor, C string and buffer.
        check(unsafe {
            libc::fstatat(
                self.fd(),
                name.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        // SAFETY: fstatat succeeded and filled it.
        let st = unsafe { st.assume_init() };
        Ok((st.st_mode & libc::S_IFMT, st.st_ino))
    }

    pub fn chown(&self, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
        // SAFETY: valid descriptor and C string.
        check(unsafe {
            libc::fchownat(
                self.fd(),
                name.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
    }

    /// Change the mode of `name`, refusing a symlink. Linux had no such call before
    /// fchmodat2 (6.6); older kernels take glibc's detour: an O_PATH descriptor of the entry
    /// itself, checked not to be a symlink, changed through /proc.
    pub fn chmod(&self, name: &CStr, mode: u32) -> io::Result<()> {
        static NO_FCHMODAT2: AtomicBool = AtomicBool::new(false);
        if !NO_FCHMODAT2.load(Ordering::Relaxed) {
            // SAFETY: valid descriptor and C string; fchmodat2 takes (dirfd, path, mode, flags).
            let r = unsafe {
                libc::syscall(
                    SYS_FCHMODAT2,
                    self.fd(),
                    name.as_ptr(),
                    mode as libc::c_uint,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match errno(&e) {
                libc::ENOSYS => NO_FCHMODAT2.store(true, Ordering::Relaxed),
                // Container seccomp profiles answer unknown calls with EPERM.
                libc::EPERM => {}
                _ => return Err(e),
            }
        }
        self.chmod_via_proc(name, mode)
    }

    fn chmod_via_proc(&self, name: &CStr, mode: u32) -> io::Result<()> {
        let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: valid descriptor and C string.
        let fd = owned(unsafe { libc::openat(self.fd(), name.as_ptr(), flags) })?;
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: valid descriptor and buffer.
        check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
        // SAFETY: fstat succeeded.
        if unsafe { st.assume_init() }.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        let proc = cname(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes())?;
        // SAFETY: valid C string.
        check(unsafe { libc::chmod(proc.as_ptr(), mode) }).map(drop)
    }

    pub fn set_times(&self, name: &CStr, atime: (i64, u32), mtime: (i64, u32)) -> io::Result<()> {
        let ts = |(s, n): (i64, u32)| libc::timespec {
            tv_sec: s as libc::time_t,
            tv_nsec: n as _,
        };
        let times = [ts(atime), ts(mtime)];
        // SAFETY: valid descriptor, C string and two timespecs.
        check(unsafe {
            libc::utimensat(
                self.fd(),
                name.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
    }

    /// Set an extended attribute on `name` itself. There is no `*at` xattr call before Linux
    /// 6.13; `/proc/self/fd/<dir>/<name>` reaches the directory through its descriptor
    /// (not a path that could have changed) and lsetxattr does not follow `name`.
    pub fn set_xattr(&self, name: &CStr, attr: &str, value: &[u8]) -> io::Result<()> {
        let mut p = format!("/proc/self/fd/{}/", self.fd()).into_bytes();
        p.extend_from_slice(name.to_bytes());
        let p = cname(&p)?;
        let a = cname(attr.as_bytes())?;
        // SAFETY: valid C strings and buffer of `value.len()` bytes.
        check(unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                a.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        })
        .map(drop)
    }
}

/// fchmodat2's number is the same on every architecture of the unified syscall table.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
const SYS_FCHMODAT2: libc::c_long = 452;
/// Elsewhere: no such call, so the /proc detour is taken.
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
const SYS_FCHMODAT2: libc::c_long = -1;

/// Open `rel` (a `/`-separated path of checked names below `root`) without following a
/// symlink anywhere on the way: openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS in one
/// call, or, where the kernel lacks it (before 5.6), one O_NOFOLLOW step per component.
pub fn open_beneath(root: &Dir, rel: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    static NO_OPENAT2: AtomicBool = AtomicBool::new(false);
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let rel = if rel.is_empty() { &b"."[..] } else { rel };
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let p = cname(rel)?;
        // SAFETY: open_how is plain data; all-zero is its documented default.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = flags as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
        for _ in 0..8 {
            // SAFETY: valid descriptor, C string and open_how of the size passed.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    root.fd(),
                    p.as_ptr(),
                    &how as *const libc::open_how,
                    std::mem::size_of::<libc::open_how>(),
                )
            };
            if r >= 0 {
                return owned(r as libc::c_int);
            }
            let e = io::Error::last_os_error();
            match errno(&e) {
                // A concurrent rename somewhere; the kernel asks to try again.
                libc::EAGAIN => continue,
                libc::ENOSYS => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                    break;
                }
                libc::EPERM => break,
                _ => return Err(e),
            }
        }
    }
    open_by_steps(root, rel, flags)
}

/// The fallback of [`open_beneath`]: each directory on the way entered with O_NOFOLLOW.
fn open_by_steps(root: &Dir, rel: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let mut parts = rel.split(|&b| b == b'/').peekable();
    let mut cur: Option<Dir> = None;
    while let Some(part) = parts.next() {
        let at = cur.as_ref().unwrap_or(root).fd();
        let c = cname(part)?;
        if parts.peek().is_none() {
            // SAFETY: valid descriptor and C string.
            return owned(unsafe { libc::openat(at, c.as_ptr(), flags, 0) });
        }
        // SAFETY: valid descriptor and C string.
        cur = Some(Dir(owned(unsafe {
            libc::openat(at, c.as_ptr(), DIR_FLAGS)
        })?));
    }
    unreachable!("split yields at least one part")
}

/// A directory below `root` by its relative path, opened as by [`open_beneath`].
pub fn open_dir_beneath(root: &Dir, rel: &[u8]) -> io::Result<Dir> {
    open_beneath(root, rel, DIR_FLAGS).map(Dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};

    /// A target `t` and, next to it, `outside/victim` that nothing may touch.
    fn lab() -> (tempfile::TempDir, Dir) {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("t/real")).unwrap();
        fs::create_dir(tmp.path().join("outside")).unwrap();
        fs::write(tmp.path().join("outside/victim"), b"v").unwrap();
        fs::set_permissions(
            tmp.path().join("outside/victim"),
            fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        symlink("../outside", tmp.path().join("t/out")).unwrap();
        symlink("../outside/victim", tmp.path().join("t/vic")).unwrap();
        let root = Dir::open_target(&tmp.path().join("t")).unwrap();
        (tmp, root)
    }

    fn victim_intact(tmp: &tempfile::TempDir) {
        let p = tmp.path().join("outside/victim");
        assert_eq!(fs::read(&p).unwrap(), b"v");
        let m = fs::symlink_metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o640);
        assert_eq!(fs::read_dir(tmp.path().join("outside")).unwrap().count(), 1);
    }

    #[test]
    fn opening_below_the_target_never_follows_a_symlink() {
        let (tmp, root) = lab();
        fs::write(tmp.path().join("t/real/f"), b"x").unwrap();
        for open in [open_beneath, open_by_steps] {
            assert!(open(&root, b"real/f", libc::O_RDONLY).is_ok());
            for rel in [&b"out/victim"[..], b"vic", b"out"] {
                let e = open(&root, rel, libc::O_WRONLY).map(drop).unwrap_err();
                assert!(
                    matches!(errno(&e), libc::ELOOP | libc::EXDEV | libc::ENOTDIR),
                    "{}: {e}",
                    String::from_utf8_lossy(rel)
                );
            }
        }
        assert!(open_dir_beneath(&root, b"out").is_err());
        victim_intact(&tmp);
    }

    #[test]
    fn what_is_in_the_way_is_replaced_not_followed() {
        let (tmp, root) = lab();
        // A symlink to a directory where a directory goes: replaced by a real one.
        let (d, created) = root.ensure_dir(c"out").unwrap();
        assert!(created);
        d.create_file(c"victim").unwrap();
        assert!(
            fs::symlink_metadata(tmp.path().join("t/out"))
                .unwrap()
                .is_dir()
        );
        // An existing directory is reused.
        assert!(!root.ensure_dir(c"real").unwrap().1);
        // A symlink to a file where a file goes: the link goes, the victim stays.
        use std::io::Write;
        root.create_file(c"vic").unwrap().write_all(b"new").unwrap();
        assert_eq!(fs::read(tmp.path().join("t/vic")).unwrap(), b"new");
        symlink("../outside/victim", tmp.path().join("t/l2")).unwrap();
        root.symlink(c"/etc/shadow", c"l2").unwrap();
        symlink("../outside/victim", tmp.path().join("t/l3")).unwrap();
        root.mkfifo(c"l3").unwrap();
        // An empty directory in the way goes; a non-empty one is refused.
        fs::create_dir(tmp.path().join("t/empty")).unwrap();
        root.create_file(c"empty").unwrap();
        fs::write(tmp.path().join("t/real/keep"), b"k").unwrap();
        let e = root.symlink(c"x", c"real").unwrap_err();
        assert!(e.to_string().contains("non-empty directory"), "{e}");
        victim_intact(&tmp);
    }

    #[test]
    fn metadata_calls_change_the_link_not_its_target() {
        let (tmp, root) = lab();
        let e = root.chmod(c"vic", 0o777).unwrap_err();
        assert_eq!(errno(&e), libc::EOPNOTSUPP, "{e}");
        let e = root.chmod_via_proc(c"vic", 0o777).unwrap_err();
        assert_eq!(errno(&e), libc::EOPNOTSUPP, "{e}");
        root.set_times(c"vic", (1, 0), (2, 0)).unwrap();
        let _ = root.set_xattr(c"vic", "user.evil", b"1");
        if unsafe { libc::geteuid() } == 0 {
            root.chown(c"vic", 4242, 4242).unwrap();
            assert_eq!(
                std::os::unix::fs::MetadataExt::uid(
                    &fs::metadata(tmp.path().join("outside/victim")).unwrap()
                ),
                0
            );
        }
        // On a file they work, the fallback too.
        root.create_file(c"f").unwrap();
        root.chmod(c"f", 0o751).unwrap();
        assert_eq!(
            fs::metadata(tmp.path().join("t/f"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o751
        );
        root.chmod_via_proc(c"f", 0o640).unwrap();
        assert_eq!(
            fs::metadata(tmp.path().join("t/f"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o640
        );
        assert_eq!(
            xattr::get(tmp.path().join("outside/victim"), "user.evil").unwrap(),
            None
        );
        victim_intact(&tmp);
        let m = fs::metadata(tmp.path().join("outside/victim")).unwrap();
        assert_ne!(std::os::unix::fs::MetadataExt::mtime(&m), 2);
    }
}
