//! `key list|add|remove|passwd`: more passwords for the same master key.

use super::{RepoError, Repository, Result, corrupt};
use crate::backend::FileType;
use crate::crypto::KeyFile;
use crate::id::Id;

pub struct KeyInfo {
    pub id: String,
    pub current: bool,
    pub username: String,
    pub hostname: String,
    pub created: String,
}

impl Repository {
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for f in self.backend().list(FileType::Key)? {
            let data = super::read_bounded(
                &**self.backend(),
                FileType::Key,
                &f.name,
                &format!("key {}", f.name),
            )?;
            let kf: KeyFile =
                serde_json::from_slice(&data).map_err(|e| corrupt(format!("key {}", f.name), e))?;
            out.push(KeyInfo {
                current: f.name == self.key_id(),
                id: f.name,
                username: kf.username,
                hostname: kf.hostname,
                created: kf.created.unwrap_or_default(),
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Store a new key file wrapping the master key; returns its ID.
    pub fn add_key(&self, password: &[u8]) -> Result<String> {
        let kf = KeyFile::create(
            self.key(),
            password,
            crate::crypto::DEFAULT_SCRYPT,
            &super::username(),
            &super::hostname(),
        )
        .map_err(|e| RepoError::Crypto {
            what: "new key".into(),
            source: e,
        })?;
        let json = serde_json::to_vec(&kf).expect("key file serializes");
        let id = Id::hash(&json).to_hex();
        self.backend().write(FileType::Key, &id, &json)?;
        Ok(id)
    }

    pub fn remove_key(&self, id_prefix: &str) -> Result<String> {
        let keys = self.list_keys()?;
        let hits: Vec<_> = keys
            .iter()
            .filter(|k| k.id.starts_with(id_prefix))
            .collect();
        let [k] = hits.as_slice() else {
            return Err(RepoError::Usage(format!(
                "key {id_prefix:?} matches {} keys",
                hits.len()
            )));
        };
        if k.current {
            return Err(RepoError::Usage(
                "refusing to remove the key currently in use".into(),
            ));
        }
        self.backend().remove(FileType::Key, &k.id)?;
        Ok(k.id.clone())
    }

    /// Replace the current key with one for `new_password` (add first, then remove).
    pub fn change_password(&self, new_password: &[u8]) -> Result<String> {
        let id = self.add_key(new_password)?;
        self.backend().remove(FileType::Key, self.key_id())?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::mem::MemBackend;
    use std::sync::Arc;

    #[test]
    fn add_passwd_remove() {
        let be: Arc<dyn crate::backend::Backend> = Arc::new(MemBackend::new());
        let r = Repository::init(be.clone(), b"one").unwrap();
        let k2 = r.add_key(b"two").unwrap();
        assert_eq!(r.list_keys().unwrap().len(), 2);
        assert!(r.remove_key(r.key_id()).is_err());
        let r2 = Repository::open(be.clone(), b"two").unwrap();
        assert_eq!(r2.key_id(), k2);
        let k3 = r2.change_password(b"three").unwrap();
        assert!(Repository::open(be.clone(), b"two").is_err());
        let r3 = Repository::open(be.clone(), b"three").unwrap();
        assert_eq!(r3.key_id(), k3);
        r3.remove_key(&r.key_id()[..10]).unwrap();
        assert!(Repository::open(be, b"one").is_err());
    }
}
