//! Storage backends: where repository files live (local directory, S3, REST).
//!
//! The engine sees every backend through [`Backend`]: a small, synchronous, thread-safe
//! interface over whole files named as restic names them. The engine gets parallelism by
//! calling it from several threads at once; backends that speak async protocols (S3)
//! drive their own runtime internally. Keeping the edge this thin is what lets the engine's
//! tests run against a local directory and the interop tests against MinIO and rclone
//! with the same code.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

pub mod aws_credentials;
pub mod local;
pub mod rest;
pub mod retry;
pub mod s3;
pub mod url;

pub use local::LocalBackend;
pub use rest::RestBackend;
pub use s3::{S3Backend, S3Options};
pub use url::Location;

/// Open the repository at `url` in any form restic accepts for the supported backends:
/// a plain path or `local:/path`, `s3:[http(s)://]host[:port]/bucket[/prefix]`,
/// `rest:http(s)://[user:pass@]host[:port]/[prefix/]`. S3 settings that are not part of
/// the URL come from the environment (see [`S3Options::from_env`]); so does a REST login
/// that the URL does not carry (`RESTIC_REST_USERNAME`, `RESTIC_REST_PASSWORD`, as restic
/// reads them).
///
/// Nothing is contacted yet except that S3 resolves credentials and region; a missing
/// repository shows up as `NotFound` on the first read of `config`.
pub fn open(url: &str) -> BackendResult<Arc<dyn Backend>> {
    Ok(match url::parse(url)? {
        Location::Local(path) => Arc::new(LocalBackend::new(path)),
        Location::S3(loc) => Arc::new(S3Backend::open(loc, S3Options::from_env())?),
        Location::Rest(loc) => {
            let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            let login = env("RESTIC_REST_USERNAME").map(|u| (u, env("RESTIC_REST_PASSWORD")));
            Arc::new(RestBackend::open(with_rest_login(loc, login))?)
        }
    })
}

/// A REST location with `login` (user, password) unless its URL already carries one: the
/// URL's userinfo wins, as in restic.
pub fn with_rest_login(
    mut loc: url::RestLocation,
    login: Option<(String, Option<String>)>,
) -> url::RestLocation {
    if loc.user.is_none()
        && let Some((user, password)) = login
    {
        loc.user = Some(user);
        loc.password = password;
    }
    loc
}

/// The kinds of files in a restic repository, each with its own directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileType {
    Config,
    Key,
    Snapshot,
    Index,
    Pack,
    Lock,
}

impl FileType {
    /// Directory name in the repository layout (`config` is a file at the root).
    pub fn dirname(self) -> &'static str {
        match self {
            FileType::Config => "config",
            FileType::Key => "keys",
            FileType::Snapshot => "snapshots",
            FileType::Index => "index",
            FileType::Pack => "data",
            FileType::Lock => "locks",
        }
    }

    /// The types that live in directories (everything but `config`).
    pub const DIRS: [FileType; 5] = [
        FileType::Key,
        FileType::Snapshot,
        FileType::Index,
        FileType::Pack,
        FileType::Lock,
    ];
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dirname())
    }
}

/// What went wrong at the storage edge. The kind decides what the engine does next
/// (e.g. `NotFound` while probing for `config` means "no repository here", exit code 10;
/// `Denied` on a delete means the repository is append-only for this identity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendErrorKind {
    NotFound,
    /// The server refused the operation for this identity (HTTP 403, EACCES, append-only).
    Denied,
    /// The object exists but is protected from deletion/overwrite (S3 Object Lock, retention).
    Locked,
    /// Out of space on the target (ENOSPC, HTTP 507).
    NoSpace,
    /// Network or server trouble that may go away on retry.
    Transient,
    Other,
}

#[derive(Debug, thiserror::Error)]
#[error("{op} {what} at {location}: {message}")]
pub struct BackendError {
    pub kind: BackendErrorKind,
    /// The operation: "read", "write", "list", "remove", "create".
    pub op: &'static str,
    /// The object, e.g. `data/3f/3f…` or `snapshots`.
    pub what: String,
    /// Where the repository is, without credentials.
    pub location: String,
    pub message: String,
}

impl BackendError {
    pub fn new(
        kind: BackendErrorKind,
        op: &'static str,
        what: impl Into<String>,
        location: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        BackendError {
            kind,
            op,
            what: what.into(),
            location: location.into(),
            message: message.into(),
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == BackendErrorKind::NotFound
    }
}

pub type BackendResult<T> = Result<T, BackendError>;

/// True for names restic accepts as file IDs (64 hex digits). Listing skips everything
/// else, which is what keeps temporary files and stray junk invisible to the engine.
pub fn is_id(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The object's path relative to the repository root, e.g. `data/3f/3f…` (or `data/3f…`
/// with the REST layout, which keeps packs flat). Used for storage keys and in messages.
pub fn object_path(t: FileType, name: &str, flat_packs: bool) -> String {
    match t {
        FileType::Config => "config".to_string(),
        FileType::Pack if !flat_packs => {
            format!("data/{}/{}", name.get(..2).unwrap_or(name), name)
        }
        _ => format!("{}/{}", t.dirname(), name),
    }
}

/// Rejects names that could escape the type's directory or collide with the layout.
/// `config` has a fixed name, so whatever the caller passes for it is ignored.
pub(crate) fn check_name(
    t: FileType,
    name: &str,
    op: &'static str,
    location: &str,
) -> BackendResult<()> {
    if t == FileType::Config {
        return Ok(());
    }
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\\')
        || name.contains('\0')
        || (t == FileType::Pack && name.len() < 2);
    if bad {
        return Err(BackendError::new(
            BackendErrorKind::Other,
            op,
            format!("{}/{:?}", t.dirname(), name),
            location,
            "invalid file name",
        ));
    }
    Ok(())
}

/// The first `len` bytes of `file`, which must hold at least that many.
pub(crate) fn read_temp_file(file: &File, len: u64) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(len as usize);
    let mut r = file;
    r.seek(SeekFrom::Start(0))?;
    let n = r.take(len).read_to_end(&mut data)?;
    if n as u64 != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("temporary file holds {n} bytes, expected {len}"),
        ));
    }
    Ok(data)
}

/// What [`Backend::remove_permanently`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Nothing of the file is stored any more (or it did not exist).
    Deleted,
    /// The file is gone from the repository (listing and reads no longer see it), but the
    /// storage keeps `versions` stored versions of it that are still under a retention lock
    /// (S3 Object Lock) or legal hold. `until`: when the last of those retentions ends
    /// (RFC 3339), if the storage said.
    Retained {
        versions: usize,
        until: Option<String>,
    },
}

/// One file as listed by a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub name: String,
    pub size: u64,
    /// When the storage itself last wrote the file (S3 `LastModified`, the local file's
    /// mtime), where the listing says. For files a host writes, this is a time the host does
    /// not choose on S3 (the server's clock), unlike the times inside the files: retention and
    /// prune's grace period rely on it. `None` where the protocol does not tell (REST).
    pub modified: Option<std::time::SystemTime>,
}

impl FileInfo {
    pub fn new(name: impl Into<String>, size: u64) -> FileInfo {
        FileInfo {
            name: name.into(),
            size,
            modified: None,
        }
    }

    pub fn modified(mut self, t: Option<std::time::SystemTime>) -> FileInfo {
        self.modified = t;
        self
    }
}

/// A place that stores repository files. Implementations must make `write` atomic
/// (a reader never sees a partial file) and durable before returning: the engine relies on
/// "pack stored, then index, then snapshot" for crash safety.
pub trait Backend: Send + Sync {
    /// Human-readable location without secrets, for messages.
    fn location(&self) -> String;
    /// Create the repository layout if needed (idempotent).
    fn create(&self) -> BackendResult<()>;
    /// List files of one type. Names that are not 64-hex IDs are skipped, as restic does.
    /// `FileType::Config` lists `config` if present.
    fn list(&self, t: FileType) -> BackendResult<Vec<FileInfo>>;
    /// Read a whole file, however large. For packs only where the whole pack is wanted
    /// (check); files a reader must hold in memory go through [`Backend::read_prefix`].
    fn read(&self, t: FileType, name: &str) -> BackendResult<Vec<u8>>;
    /// Read at most `max` bytes from the start of a file: the whole file when it is not
    /// longer. Never transfers or buffers much more than `max`, whatever the file's size, so
    /// a caller with a size limit asks for `limit + 1` bytes and treats a longer answer as
    /// "too large" (see `repo::read_bounded`).
    fn read_prefix(&self, t: FileType, name: &str, max: u64) -> BackendResult<Vec<u8>>;
    /// Read `length` bytes at `offset`.
    fn read_range(
        &self,
        t: FileType,
        name: &str,
        offset: u64,
        length: u64,
    ) -> BackendResult<Vec<u8>>;
    /// Store a whole file atomically and durably.
    fn write(&self, t: FileType, name: &str, data: &[u8]) -> BackendResult<()>;
    /// Store the first `len` bytes of `file` (read from offset 0) atomically and durably,
    /// like [`Backend::write`]. The backup writes packs to temporary files and hands them
    /// over here, so a pack does not have to sit in memory while it waits for its upload.
    /// The default reads the file into memory and calls `write`; backends override it to
    /// stream or, for a file in [`Backend::temp_dir`], to link it in place.
    fn write_file(&self, t: FileType, name: &str, file: &File, len: u64) -> BackendResult<()> {
        let data = read_temp_file(file, len).map_err(|e| {
            BackendError::new(
                BackendErrorKind::Other,
                "write",
                object_path(t, name, false),
                self.location(),
                format!("reading temporary file: {e}"),
            )
        })?;
        self.write(t, name, &data)
    }
    /// A directory on the repository's own file system where temporary files for
    /// [`Backend::write_file`] are best created (it can then link instead of copy);
    /// `None`: anywhere (the system's temporary directory).
    fn temp_dir(&self) -> Option<PathBuf> {
        None
    }
    /// Delete a file. Deleting a file that does not exist is not an error.
    fn remove(&self, t: FileType, name: &str) -> BackendResult<()>;
    /// Delete a file for good, as prune and forget do with repository data. `remove` may
    /// leave older versions behind (a delete marker on a versioned S3 bucket), which is what
    /// lock files and the like want; this also frees their storage where the backend can.
    /// Versions the storage must keep for now are reported as [`Removal::Retained`], with
    /// the file already gone from the repository. Deleting a file that does not exist is not
    /// an error.
    fn remove_permanently(&self, t: FileType, name: &str) -> BackendResult<Removal> {
        self.remove(t, name).map(|()| Removal::Deleted)
    }
}
