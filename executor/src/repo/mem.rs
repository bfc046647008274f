//! An in-memory [`Backend`] for tests and dry runs.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::backend::{Backend, BackendError, BackendErrorKind, BackendResult, FileInfo, FileType};

#[derive(Default)]
pub struct MemBackend {
    files: Mutex<BTreeMap<(FileType, String), Vec<u8>>>,
}

impl MemBackend {
    pub fn new() -> MemBackend {
        MemBackend::default()
    }

    fn not_found(&self, op: &'static str, t: FileType, name: &str) -> BackendError {
        BackendError {
            kind: BackendErrorKind::NotFound,
            op,
            what: format!("{t}/{name}"),
            location: self.location(),
            message: "no such file".into(),
        }
    }

    /// Test hook: overwrite a stored file (e.g. to simulate corruption).
    pub fn put_raw(&self, t: FileType, name: &str, data: Vec<u8>) {
        self.files
            .lock()
            .expect("poisoned")
            .insert((t, name.to_string()), data);
    }
}

impl Backend for MemBackend {
    fn location(&self) -> String {
        "memory".into()
    }

    fn create(&self) -> BackendResult<()> {
        Ok(())
    }

    fn list(&self, t: FileType) -> BackendResult<Vec<FileInfo>> {
        Ok(self
            .files
            .lock()
            .expect("poisoned")
            .iter()
            .filter(|((ft, _), _)| *ft == t)
            .map(|((_, n), d)| FileInfo::new(n.clone(), d.len() as u64))
            .collect())
    }

    fn read(&self, t: FileType, name: &str) -> BackendResult<Vec<u8>> {
        self.files
            .lock()
            .expect("poisoned")
            .get(&(t, name.to_string()))
            .cloned()
            .ok_or_else(|| self.not_found("read", t, name))
    }

    fn read_prefix(&self, t: FileType, name: &str, max: u64) -> BackendResult<Vec<u8>> {
        let files = self.files.lock().expect("poisoned");
        let all = files
            .get(&(t, name.to_string()))
            .ok_or_else(|| self.not_found("read", t, name))?;
        Ok(all[..all.len().min(usize::try_from(max).unwrap_or(usize::MAX))].to_vec())
    }

    fn read_range(
        &self,
        t: FileType,
        name: &str,
        offset: u64,
        length: u64,
    ) -> BackendResult<Vec<u8>> {
        let all = self.read(t, name)?;
        let end = offset.saturating_add(length).min(all.len() as u64) as usize;
        Ok(all.get(offset as usize..end).unwrap_or_default().to_vec())
    }

    fn write(&self, t: FileType, name: &str, data: &[u8]) -> BackendResult<()> {
        self.put_raw(t, name, data.to_vec());
        Ok(())
    }

    fn remove(&self, t: FileType, name: &str) -> BackendResult<()> {
        self.files
            .lock()
            .expect("poisoned")
            .remove(&(t, name.to_string()));
        Ok(())
    }
}
