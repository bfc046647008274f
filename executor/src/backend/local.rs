//! A repository in a local directory, laid out and written the way restic's local backend
//! does it, so that restic and fleetsnap can share one directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::Rng;
use tracing::debug_span;

use super::{
    Backend, BackendError, BackendErrorKind, BackendResult, FileInfo, FileType, check_name, is_id,
    object_path,
};

/// Directory and file modes. restic derives them from the `config` file so that a
/// repository an admin made group-readable stays group-readable as it grows.
#[derive(Debug, Clone, Copy)]
struct Modes {
    dir: u32,
    file: u32,
}

impl Modes {
    const PRIVATE: Modes = Modes {
        dir: 0o700,
        file: 0o600,
    };
    const GROUP_READABLE: Modes = Modes {
        dir: 0o750,
        file: 0o640,
    };

    fn for_repo(root: &Path) -> Modes {
        match fs::metadata(root.join("config")) {
            Ok(m) if m.permissions().mode() & 0o040 != 0 => Modes::GROUP_READABLE,
            _ => Modes::PRIVATE,
        }
    }

    /// Stored files lose their write bits: they are never modified, and a stray write by an
    /// admin would silently corrupt a content-addressed object.
    fn stored_file(self) -> u32 {
        self.file & !0o222
    }
}

#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
    modes: Modes,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let modes = Modes::for_repo(&root);
        LocalBackend { root, modes }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir_of(&self, t: FileType, name: &str) -> PathBuf {
        match t {
            FileType::Config => self.root.clone(),
            FileType::Pack => self.root.join("data").join(&name[..2]),
            _ => self.root.join(t.dirname()),
        }
    }

    fn path_of(&self, t: FileType, name: &str) -> PathBuf {
        match t {
            FileType::Config => self.root.join("config"),
            _ => self.dir_of(t, name).join(name),
        }
    }

    fn err(&self, op: &'static str, what: impl Into<String>, e: &io::Error) -> BackendError {
        BackendError::new(io_kind(e), op, what, self.location(), e.to_string())
    }

    fn mkdir_all(&self, dir: &Path) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(self.modes.dir)
            .create(dir)
    }

    fn list_dir(&self, dir: &Path, out: &mut Vec<FileInfo>) -> io::Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            // Empty directories get lost (git checkouts, rsync without -r...); restic treats
            // a missing directory as empty and so do we.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !is_id(&name) {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(m) => m,
                // Deleted between readdir and stat: a concurrent prune, not an error.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_file() {
                out.push(FileInfo::new(name, meta.len()).modified(meta.modified().ok()));
            }
        }
        Ok(())
    }

    fn write_inner(&self, t: FileType, name: &str, data: &[u8]) -> io::Result<()> {
        self.write_with(t, name, &mut |f| f.write_all(data))
    }

    /// Store a temporary file: link it in place when it is an unlinked `O_TMPFILE` on this
    /// file system (no copy), else copy it (`copy_file_range`, in the kernel).
    fn write_file_inner(&self, t: FileType, name: &str, file: &File, len: u64) -> io::Result<()> {
        if file.metadata()?.len() == len && self.link_tmpfile(t, name, file)? {
            return Ok(());
        }
        self.write_with(t, name, &mut |f| {
            let mut r = file;
            r.seek(SeekFrom::Start(0))?;
            let n = io::copy(&mut r.take(len), f)?;
            if n != len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("temporary file holds {n} bytes, expected {len}"),
                ));
            }
            Ok(())
        })
    }

    /// Give an `O_TMPFILE` a name in the repository: fsync, `linkat` to a temporary name,
    /// rename, fsync the directory. `Ok(false)`: the file cannot be linked (not an
    /// `O_TMPFILE`, another file system, no `/proc`); the caller copies it instead.
    fn link_tmpfile(&self, t: FileType, name: &str, file: &File) -> io::Result<bool> {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::io::AsRawFd;
        let dir = self.dir_of(t, name);
        let final_path = self.path_of(t, name);
        let suffix: u64 = rand::thread_rng().r#gen();
        let tmp_path = dir.join(format!("{name}-tmp-{suffix:016x}"));
        if !dir.is_dir() {
            self.mkdir_all(&dir)?;
            if let Some(parent) = dir.parent() {
                File::open(parent)?.sync_all()?;
            }
        }
        // The content must be on disk before any name points at it.
        file.sync_all()?;
        let src =
            std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("no NUL");
        let Ok(dst) = std::ffi::CString::new(tmp_path.as_os_str().as_bytes()) else {
            return Ok(false);
        };
        // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                src.as_ptr(),
                libc::AT_FDCWD,
                dst.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if r != 0 {
            return Ok(false);
        }
        if let Err(e) = fs::rename(&tmp_path, &final_path) {
            let _ = fs::remove_file(&tmp_path);
            return Err(e);
        }
        File::open(&dir)?.sync_all()?;
        fs::set_permissions(
            &final_path,
            fs::Permissions::from_mode(self.modes.stored_file()),
        )?;
        Ok(true)
    }

    fn write_with(
        &self,
        t: FileType,
        name: &str,
        fill: &mut dyn FnMut(&mut File) -> io::Result<()>,
    ) -> io::Result<()> {
        let dir = self.dir_of(t, name);
        let final_path = self.path_of(t, name);
        let suffix: u64 = rand::thread_rng().r#gen();
        let tmp_name = format!(
            "{}-tmp-{:016x}",
            final_path.file_name().unwrap().to_string_lossy(),
            suffix
        );
        let tmp_path = dir.join(tmp_name);

        let open = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(self.modes.file)
                .open(&tmp_path)
        };
        let mut f = match open() {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.mkdir_all(&dir)?;
                // A file in a directory whose own entry is not on disk can vanish with it.
                if let Some(parent) = dir.parent() {
                    File::open(parent)?.sync_all()?;
                }
                open()?
            }
            Err(e) => return Err(e),
        };

        let result = (|| {
            fill(&mut f)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp_path, &final_path)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp_path);
            return Err(e);
        }
        // The rename is only durable once the directory entry is on disk.
        File::open(&dir)?.sync_all()?;
        fs::set_permissions(
            &final_path,
            fs::Permissions::from_mode(self.modes.stored_file()),
        )?;
        Ok(())
    }

    fn read_range_inner(&self, path: &Path, offset: u64, length: u64) -> io::Result<Vec<u8>> {
        let mut f = File::open(path)?;
        let size = f.metadata()?.len();
        f.seek(SeekFrom::Start(offset))?;
        let want = length.min(size.saturating_sub(offset)).min(64 << 20);
        let mut buf = Vec::with_capacity(want as usize);
        f.take(length).read_to_end(&mut buf)?;
        Ok(buf)
    }
}

/// Translate an OS error into what the engine acts on.
fn io_kind(e: &io::Error) -> BackendErrorKind {
    use io::ErrorKind as K;
    match e.kind() {
        K::NotFound => BackendErrorKind::NotFound,
        K::PermissionDenied | K::ReadOnlyFilesystem => BackendErrorKind::Denied,
        K::StorageFull | K::QuotaExceeded => BackendErrorKind::NoSpace,
        K::Interrupted | K::TimedOut | K::WouldBlock => BackendErrorKind::Transient,
        _ => BackendErrorKind::Other,
    }
}

pub(crate) fn short_read_error(
    what: String,
    location: String,
    offset: u64,
    wanted: u64,
    got: usize,
) -> BackendError {
    BackendError::new(
        BackendErrorKind::Other,
        "read",
        what,
        location,
        format!("file too short: wanted {wanted} bytes at offset {offset}, got {got} (truncated?)"),
    )
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        format!("local:{}", self.root.display())
    }

    fn create(&self) -> BackendResult<()> {
        let _span = debug_span!("backend.create", backend = "local").entered();
        let mut dirs = vec![self.root.clone()];
        for t in FileType::DIRS {
            dirs.push(self.root.join(t.dirname()));
        }
        for i in 0..=255u8 {
            dirs.push(self.root.join("data").join(format!("{i:02x}")));
        }
        for d in dirs {
            self.mkdir_all(&d)
                .map_err(|e| self.err("create", d.display().to_string(), &e))?;
        }
        Ok(())
    }

    fn list(&self, t: FileType) -> BackendResult<Vec<FileInfo>> {
        let _span = debug_span!("backend.list", backend = "local", what = %t).entered();
        let mut out = Vec::new();
        let fail = |e: io::Error| self.err("list", t.dirname(), &e);
        match t {
            FileType::Config => match fs::metadata(self.root.join("config")) {
                Ok(m) if m.is_file() => {
                    out.push(FileInfo::new("config", m.len()).modified(m.modified().ok()))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(fail(e)),
            },
            FileType::Pack => {
                let data = self.root.join("data");
                let subdirs = match fs::read_dir(&data) {
                    Ok(d) => d,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(fail(e)),
                };
                for sub in subdirs {
                    let sub = sub.map_err(fail)?;
                    // Packs normally sit in data/<2 hex>/, but a flat data/ (REST layout
                    // copied onto disk) still reads: follow both.
                    let ft = sub.file_type().map_err(fail)?;
                    if ft.is_dir() {
                        self.list_dir(&sub.path(), &mut out).map_err(fail)?;
                    }
                }
                let mut flat = Vec::new();
                self.list_dir(&data, &mut flat).map_err(fail)?;
                out.extend(flat);
            }
            _ => self
                .list_dir(&self.root.join(t.dirname()), &mut out)
                .map_err(fail)?,
        }
        Ok(out)
    }

    fn read(&self, t: FileType, name: &str) -> BackendResult<Vec<u8>> {
        check_name(t, name, "read", &self.location())?;
        let what = object_path(t, name, false);
        let _span = debug_span!("backend.read", backend = "local", what = %what).entered();
        fs::read(self.path_of(t, name)).map_err(|e| self.err("read", what, &e))
    }

    fn read_prefix(&self, t: FileType, name: &str, max: u64) -> BackendResult<Vec<u8>> {
        check_name(t, name, "read", &self.location())?;
        let what = object_path(t, name, false);
        let _span =
            debug_span!("backend.read_prefix", backend = "local", what = %what, max).entered();
        self.read_range_inner(&self.path_of(t, name), 0, max)
            .map_err(|e| self.err("read", what, &e))
    }

    fn read_range(
        &self,
        t: FileType,
        name: &str,
        offset: u64,
        length: u64,
    ) -> BackendResult<Vec<u8>> {
        check_name(t, name, "read", &self.location())?;
        let what = object_path(t, name, false);
        let _span =
            debug_span!("backend.read_range", backend = "local", what = %what, offset, length)
                .entered();
        let buf = self
            .read_range_inner(&self.path_of(t, name), offset, length)
            .map_err(|e| self.err("read", what.clone(), &e))?;
        if (buf.len() as u64) < length {
            return Err(short_read_error(
                what,
                self.location(),
                offset,
                length,
                buf.len(),
            ));
        }
        Ok(buf)
    }

    fn write(&self, t: FileType, name: &str, data: &[u8]) -> BackendResult<()> {
        check_name(t, name, "write", &self.location())?;
        let what = object_path(t, name, false);
        let _span =
            debug_span!("backend.write", backend = "local", what = %what, size = data.len())
                .entered();
        self.write_inner(t, name, data)
            .map_err(|e| self.err("write", what, &e))
    }

    fn write_file(&self, t: FileType, name: &str, file: &File, len: u64) -> BackendResult<()> {
        check_name(t, name, "write", &self.location())?;
        let what = object_path(t, name, false);
        let _span =
            debug_span!("backend.write", backend = "local", what = %what, size = len).entered();
        self.write_file_inner(t, name, file, len)
            .map_err(|e| self.err("write", what, &e))
    }

    fn temp_dir(&self) -> Option<PathBuf> {
        let data = self.root.join("data");
        data.is_dir().then_some(data)
    }

    fn remove(&self, t: FileType, name: &str) -> BackendResult<()> {
        check_name(t, name, "remove", &self.location())?;
        let what = object_path(t, name, false);
        let _span = debug_span!("backend.remove", backend = "local", what = %what).entered();
        match fs::remove_file(self.path_of(t, name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("remove", what, &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "3f2a8e1d9c4b5a6f7e8d9c0b1a2f3e4d5c6b7a8f9e0d1c2b3a4f5e6d7c8b9a0f";
    const B: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn backend() -> (tempfile::TempDir, LocalBackend) {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path().join("repo"));
        (dir, b)
    }

    #[test]
    fn create_makes_full_layout_and_is_idempotent() {
        let (_d, b) = backend();
        b.create().unwrap();
        b.create().unwrap();
        for d in [
            "keys",
            "snapshots",
            "index",
            "locks",
            "data",
            "data/00",
            "data/ff",
        ] {
            assert!(b.root().join(d).is_dir(), "{d} missing");
        }
        assert_eq!(fs::read_dir(b.root().join("data")).unwrap().count(), 256);
        let mode = fs::metadata(b.root().join("keys"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn write_read_list_remove_roundtrip() {
        let (_d, b) = backend();
        b.create().unwrap();
        b.write(FileType::Pack, A, b"pack bytes").unwrap();
        b.write(FileType::Snapshot, B, b"snap").unwrap();
        b.write(FileType::Config, "config", b"cfg").unwrap();

        let p = b.root().join("data/3f").join(A);
        assert_eq!(fs::read(&p).unwrap(), b"pack bytes");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o400
        );

        assert_eq!(b.read(FileType::Pack, A).unwrap(), b"pack bytes");
        assert_eq!(b.read_range(FileType::Pack, A, 5, 5).unwrap(), b"bytes");
        assert_eq!(b.read_range(FileType::Pack, A, 0, 0).unwrap(), b"");
        assert_eq!(b.read(FileType::Config, "").unwrap(), b"cfg");

        let packs = b.list(FileType::Pack).unwrap();
        assert_eq!(
            packs
                .iter()
                .map(|f| (f.name.as_str(), f.size))
                .collect::<Vec<_>>(),
            vec![(A, 10)]
        );
        assert!(
            packs[0].modified.is_some(),
            "local listings carry the mtime"
        );
        assert_eq!(b.list(FileType::Config).unwrap()[0].name, "config");
        assert_eq!(b.list(FileType::Snapshot).unwrap().len(), 1);
        assert!(b.list(FileType::Index).unwrap().is_empty());

        b.remove(FileType::Pack, A).unwrap();
        assert!(b.list(FileType::Pack).unwrap().is_empty());
        let e = b.read(FileType::Pack, A).unwrap_err();
        assert_eq!(e.kind, BackendErrorKind::NotFound);
        assert!(e.to_string().contains(&format!("data/3f/{A}")), "{e}");
        // Removing again is fine: prune and lock cleanup race with each other.
        b.remove(FileType::Pack, A).unwrap();
    }

    #[test]
    fn overwrite_of_read_only_file_replaces_it() {
        let (_d, b) = backend();
        b.write(FileType::Lock, A, b"one").unwrap();
        b.write(FileType::Lock, A, b"two").unwrap();
        assert_eq!(b.read(FileType::Lock, A).unwrap(), b"two");
    }

    #[test]
    fn missing_dirs_list_empty_and_are_created_on_write() {
        let (_d, b) = backend();
        for t in [
            FileType::Config,
            FileType::Pack,
            FileType::Index,
            FileType::Key,
        ] {
            assert!(b.list(t).unwrap().is_empty());
        }
        b.write(FileType::Pack, B, b"x").unwrap();
        b.write(FileType::Key, A, b"k").unwrap();
        assert_eq!(b.list(FileType::Pack).unwrap().len(), 1);
        assert_eq!(b.list(FileType::Key).unwrap().len(), 1);
    }

    #[test]
    fn list_skips_non_ids_and_temp_files() {
        let (_d, b) = backend();
        b.create().unwrap();
        b.write(FileType::Index, A, b"i").unwrap();
        fs::write(b.root().join("index").join(format!("{A}-tmp-1234")), b"t").unwrap();
        fs::write(b.root().join("index/README"), b"t").unwrap();
        fs::write(b.root().join("data/3f/junk"), b"t").unwrap();
        let l = b.list(FileType::Index).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].name, A);
        assert!(b.list(FileType::Pack).unwrap().is_empty());
    }

    #[test]
    fn flat_data_dir_is_listed_too() {
        let (_d, b) = backend();
        b.create().unwrap();
        fs::write(b.root().join("data").join(A), b"flat").unwrap();
        assert_eq!(b.list(FileType::Pack).unwrap()[0].name, A);
    }

    #[test]
    fn short_range_is_an_error_not_silent_truncation() {
        let (_d, b) = backend();
        b.write(FileType::Pack, A, b"0123456789").unwrap();
        let e = b.read_range(FileType::Pack, A, 8, 5).unwrap_err();
        assert_eq!(e.kind, BackendErrorKind::Other);
        assert!(e.message.contains("too short"), "{e}");
    }

    #[test]
    fn bad_names_are_rejected() {
        let (_d, b) = backend();
        for n in ["", "..", "../x", "a/b", "a"] {
            assert!(b.write(FileType::Pack, n, b"x").is_err(), "{n:?} accepted");
        }
        assert!(b.read(FileType::Key, "../config").is_err());
    }

    #[test]
    fn permission_denied_maps_to_denied() {
        // Root ignores directory permissions, so this only says something for other users.
        if is_root() {
            return;
        }
        let (_d, b) = backend();
        b.create().unwrap();
        let keys = b.root().join("keys");
        fs::set_permissions(&keys, fs::Permissions::from_mode(0o500)).unwrap();
        let e = b.write(FileType::Key, A, b"k").unwrap_err();
        fs::set_permissions(&keys, fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(e.kind, BackendErrorKind::Denied, "{e}");
    }

    #[test]
    fn group_readable_config_makes_group_readable_files() {
        let (_d, b) = backend();
        b.create().unwrap();
        let cfg = b.root().join("config");
        fs::write(&cfg, b"c").unwrap();
        fs::set_permissions(&cfg, fs::Permissions::from_mode(0o440)).unwrap();
        let b = LocalBackend::new(b.root());
        b.write(FileType::Snapshot, A, b"s").unwrap();
        let m = fs::metadata(b.root().join("snapshots").join(A)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o440);
    }

    #[test]
    fn no_space_maps_to_no_space() {
        let e = io::Error::from(io::ErrorKind::StorageFull);
        assert_eq!(io_kind(&e), BackendErrorKind::NoSpace);
        let e = io::Error::from_raw_os_error(28); // ENOSPC
        assert_eq!(io_kind(&e), BackendErrorKind::NoSpace);
        let e = io::Error::from_raw_os_error(13); // EACCES
        assert_eq!(io_kind(&e), BackendErrorKind::Denied);
    }

    fn is_root() -> bool {
        // /proc/self/status avoids a libc dependency just for geteuid.
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
            })
            .unwrap_or(false)
    }
}
