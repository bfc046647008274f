//! restic's authenticated encryption (AES-256-CTR then Poly1305-AES) and scrypt key files.
//!
//! Every repository file except key files and every blob is `IV || ciphertext || tag`.

use aes::cipher::{BlockEncrypt, KeyInit, KeyIvInit, StreamCipher};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// The whole 16-byte IV is one big-endian counter: narrower counters diverge from Go on carry.
type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

pub const IV_LEN: usize = 16;
pub const MAC_LEN: usize = 16;
/// Bytes a sealed message adds to its plaintext.
pub const OVERHEAD: usize = IV_LEN + MAC_LEN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("ciphertext verification failed")]
    Mac,
    #[error("ciphertext too short ({0} bytes, need at least 32)")]
    TooShort(usize),
    #[error("invalid (all-zero) nonce")]
    ZeroNonce,
    #[error("key file: {0}")]
    KeyFile(String),
}

/// A restic crypto key: AES-256 key plus Poly1305-AES key (k, r).
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    pub encrypt: [u8; 32],
    pub mac_k: [u8; 16],
    pub mac_r: [u8; 16],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<secret>)")
    }
}

fn clamp(r: &[u8; 16]) -> [u8; 16] {
    let mut r = *r;
    for i in [3, 7, 11, 15] {
        r[i] &= 0x0f;
    }
    for i in [4, 8, 12] {
        r[i] &= 0xfc;
    }
    r
}

impl Key {
    pub fn random() -> Key {
        let mut rng = rand::rngs::OsRng;
        let mut k = Key {
            encrypt: [0; 32],
            mac_k: [0; 16],
            mac_r: [0; 16],
        };
        rng.fill_bytes(&mut k.encrypt);
        rng.fill_bytes(&mut k.mac_k);
        rng.fill_bytes(&mut k.mac_r);
        k
    }

    /// Split 64 bytes of scrypt output the way restic does: encrypt, k, r.
    pub fn from_slice64(b: &[u8; 64]) -> Key {
        let mut k = Key {
            encrypt: [0; 32],
            mac_k: [0; 16],
            mac_r: [0; 16],
        };
        k.encrypt.copy_from_slice(&b[..32]);
        k.mac_k.copy_from_slice(&b[32..48]);
        k.mac_r.copy_from_slice(&b[48..64]);
        k
    }

    /// restic rejects keys with an all-zero part.
    pub fn is_valid(&self) -> bool {
        self.encrypt != [0; 32] && self.mac_k != [0; 16] && self.mac_r != [0; 16]
    }

    pub fn mac(&self, iv: &[u8; 16], ciphertext: &[u8]) -> [u8; 16] {
        let mut s = aes::Block::clone_from_slice(iv);
        aes::Aes128::new(&self.mac_k.into()).encrypt_block(&mut s);
        let mut otk = [0u8; 32];
        otk[..16].copy_from_slice(&clamp(&self.mac_r));
        otk[16..].copy_from_slice(&s);
        poly1305::Poly1305::new(&otk.into())
            .compute_unpadded(ciphertext)
            .into()
    }

    /// Encrypt with a fresh random IV; returns `IV || C || T`.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut iv = [0u8; 16];
        while iv == [0; 16] {
            rand::rngs::OsRng.fill_bytes(&mut iv);
        }
        self.seal_with_iv(&iv, plaintext)
    }

    pub fn seal_with_iv(&self, iv: &[u8; 16], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        out.extend_from_slice(iv);
        out.extend_from_slice(plaintext);
        Aes256Ctr::new(&self.encrypt.into(), &(*iv).into()).apply_keystream(&mut out[IV_LEN..]);
        let tag = self.mac(iv, &out[IV_LEN..]);
        out.extend_from_slice(&tag);
        out
    }

    /// Seal in place: `buf` holds `IV_LEN` bytes of room followed by the plaintext; the
    /// room gets a fresh IV, the plaintext is encrypted and the MAC appended. Same output as
    /// [`Key::seal`], without a second buffer.
    pub fn seal_in_place(&self, buf: &mut Vec<u8>) {
        assert!(buf.len() >= IV_LEN, "no room for the IV");
        let mut iv = [0u8; 16];
        while iv == [0; 16] {
            rand::rngs::OsRng.fill_bytes(&mut iv);
        }
        buf[..IV_LEN].copy_from_slice(&iv);
        Aes256Ctr::new(&self.encrypt.into(), &iv.into()).apply_keystream(&mut buf[IV_LEN..]);
        let tag = self.mac(&iv, &buf[IV_LEN..]);
        buf.extend_from_slice(&tag);
    }

    /// Verify the tag (constant time) before decrypting anything.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < OVERHEAD {
            return Err(CryptoError::TooShort(sealed.len()));
        }
        let iv: [u8; 16] = sealed[..IV_LEN].try_into().expect("length checked");
        if iv == [0; 16] {
            return Err(CryptoError::ZeroNonce);
        }
        let ct = &sealed[IV_LEN..sealed.len() - MAC_LEN];
        let tag = &sealed[sealed.len() - MAC_LEN..];
        if !bool::from(self.mac(&iv, ct).ct_eq(tag)) {
            return Err(CryptoError::Mac);
        }
        let mut pt = ct.to_vec();
        Aes256Ctr::new(&self.encrypt.into(), &iv.into()).apply_keystream(&mut pt);
        Ok(pt)
    }

    /// [`Key::open`] without a copy: verify the tag, decrypt the ciphertext where it is and
    /// return it. On error `sealed` is unchanged.
    pub fn open_in_place<'a>(&self, sealed: &'a mut [u8]) -> Result<&'a mut [u8], CryptoError> {
        if sealed.len() < OVERHEAD {
            return Err(CryptoError::TooShort(sealed.len()));
        }
        let iv: [u8; 16] = sealed[..IV_LEN].try_into().expect("length checked");
        if iv == [0; 16] {
            return Err(CryptoError::ZeroNonce);
        }
        let n = sealed.len();
        let (body, tag) = sealed.split_at_mut(n - MAC_LEN);
        let ct = &mut body[IV_LEN..];
        if !bool::from(self.mac(&iv, ct).ct_eq(tag)) {
            return Err(CryptoError::Mac);
        }
        Aes256Ctr::new(&self.encrypt.into(), &iv.into()).apply_keystream(ct);
        Ok(ct)
    }
}

/// The master key as stored (encrypted) inside key files.
#[derive(Serialize, Deserialize)]
struct MasterKeyJson {
    mac: MacJson,
    encrypt: String,
}

#[derive(Serialize, Deserialize)]
struct MacJson {
    k: String,
    r: String,
}

fn b64_fixed<const N: usize>(s: &str, what: &str) -> Result<[u8; N], CryptoError> {
    let v = B64
        .decode(s)
        .map_err(|e| CryptoError::KeyFile(format!("{what}: {e}")))?;
    v.try_into()
        .map_err(|_| CryptoError::KeyFile(format!("{what}: expected {N} bytes")))
}

impl Key {
    pub fn to_master_json(&self) -> Vec<u8> {
        serde_json::to_vec(&MasterKeyJson {
            mac: MacJson {
                k: B64.encode(self.mac_k),
                r: B64.encode(self.mac_r),
            },
            encrypt: B64.encode(self.encrypt),
        })
        .expect("plain struct serializes")
    }

    pub fn from_master_json(json: &[u8]) -> Result<Key, CryptoError> {
        let m: MasterKeyJson = serde_json::from_slice(json)
            .map_err(|e| CryptoError::KeyFile(format!("master key JSON: {e}")))?;
        let k = Key {
            encrypt: b64_fixed(&m.encrypt, "encrypt")?,
            mac_k: b64_fixed(&m.mac.k, "mac.k")?,
            mac_r: b64_fixed(&m.mac.r, "mac.r")?,
        };
        if !k.is_valid() {
            return Err(CryptoError::KeyFile(
                "master key has an all-zero part".into(),
            ));
        }
        Ok(k)
    }
}

/// A key file (`keys/<id>`): plain JSON wrapping the master key with a password-derived key.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct KeyFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub username: String,
    pub hostname: String,
    pub kdf: String,
    #[serde(rename = "N")]
    pub n: u64,
    pub r: u32,
    pub p: u32,
    pub salt: String,
    pub data: String,
}

/// scrypt cost used for new keys (restic's calibration result on typical hosts).
pub const DEFAULT_SCRYPT: (u64, u32, u32) = (32768, 8, 1);

pub fn derive_user_key(
    password: &[u8],
    salt: &[u8],
    n: u64,
    r: u32,
    p: u32,
) -> Result<Key, CryptoError> {
    if n <= 1 || !n.is_power_of_two() || n > (1 << 31) - 1 {
        return Err(CryptoError::KeyFile(format!(
            "scrypt N={n} is not a power of two > 1"
        )));
    }
    if r == 0 || p == 0 || (r as u64) * (p as u64) >= 1 << 30 {
        return Err(CryptoError::KeyFile(format!(
            "scrypt r={r} p={p} out of range"
        )));
    }
    let log_n = n.trailing_zeros() as u8;
    let params = scrypt::Params::new(log_n, r, p, 64)
        .map_err(|e| CryptoError::KeyFile(format!("scrypt parameters: {e}")))?;
    let mut out = [0u8; 64];
    scrypt::scrypt(password, salt, &params, &mut out)
        .map_err(|e| CryptoError::KeyFile(format!("scrypt: {e}")))?;
    Ok(Key::from_slice64(&out))
}

impl KeyFile {
    /// Derive the user key and unwrap the master key. `CryptoError::Mac` = wrong password.
    pub fn open(&self, password: &[u8]) -> Result<Key, CryptoError> {
        if self.kdf != "scrypt" {
            return Err(CryptoError::KeyFile(format!(
                "unsupported KDF {:?}",
                self.kdf
            )));
        }
        let salt = B64
            .decode(&self.salt)
            .map_err(|e| CryptoError::KeyFile(format!("salt: {e}")))?;
        if salt.len() != 64 {
            return Err(CryptoError::KeyFile(format!(
                "salt is {} bytes, expected 64",
                salt.len()
            )));
        }
        let data = B64
            .decode(&self.data)
            .map_err(|e| CryptoError::KeyFile(format!("data: {e}")))?;
        let user = derive_user_key(password, &salt, self.n, self.r, self.p)?;
        let master_json = user.open(&data)?;
        Key::from_master_json(&master_json)
    }

    /// Wrap `master` for `password` with fresh salt.
    pub fn create(
        master: &Key,
        password: &[u8],
        (n, r, p): (u64, u32, u32),
        username: &str,
        hostname: &str,
    ) -> Result<KeyFile, CryptoError> {
        let mut salt = [0u8; 64];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let user = derive_user_key(password, &salt, n, r, p)?;
        let data = user.seal(&master.to_master_json());
        Ok(KeyFile {
            created: Some(crate::format::time::GoTime::now().to_string()),
            username: username.to_string(),
            hostname: hostname.to_string(),
            kdf: "scrypt".into(),
            n,
            r,
            p,
            salt: B64.encode(salt),
            data: B64.encode(data),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn vectors(rel: &str) -> Value {
        let p = format!(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/testdata/restic-fixtures/vectors/{}"
            ),
            rel
        );
        serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))).unwrap()
    }

    fn h(v: &Value) -> Vec<u8> {
        hex::decode(v.as_str().unwrap()).unwrap()
    }

    fn master_from(v: &Value) -> Key {
        Key {
            encrypt: h(&v["encrypt_hex"]).try_into().unwrap(),
            mac_k: h(&v["mac_k_hex"]).try_into().unwrap(),
            mac_r: h(&v["mac_r_hex"]).try_into().unwrap(),
        }
    }

    #[test]
    fn ctr_carry_and_wrap_vectors() {
        let v = vectors("crafted/crafted-v2.json");
        let key = master_from(&v["master_key"]);
        for case in ["ctr_carry_low64_plain_json", "ctr_wrap_128_zstd_checksum"] {
            let c = &v[case];
            let file = h(&c["file_hex"]);
            assert_eq!(crate::id::Id::hash(&file).to_hex(), c["file_name_sha256"]);
            let pt = key.open(&file).unwrap();
            assert_eq!(pt, h(&c["decrypted_file_hex"]), "{case}");
            let iv: [u8; 16] = h(&c["iv_hex"]).try_into().unwrap();
            assert_eq!(key.seal_with_iv(&iv, &pt), file, "{case} reseal");
            let mut bad = file.clone();
            bad[20] ^= 1;
            assert_eq!(key.open(&bad), Err(CryptoError::Mac));
        }
    }

    #[test]
    fn config_mac_intermediates() {
        let v = vectors("repo-v2/kat-config-file.json");
        let mk = vectors("repo-v2/kat-kdf-and-key-file.json");
        let m = &mk["master_key"];
        let key = Key {
            encrypt: h(&m["encrypt_hex"]).try_into().unwrap(),
            mac_k: h(&m["mac_k_hex"]).try_into().unwrap(),
            mac_r: h(&m["mac_r_hex_as_stored"]).try_into().unwrap(),
        };
        let iv: [u8; 16] = h(&v["iv_hex"]).try_into().unwrap();
        let tag = key.mac(&iv, &h(&v["ciphertext_hex"]));
        assert_eq!(tag.to_vec(), h(&v["mac_hex"]));
        let pt = key.open(&h(&v["file_hex"])).unwrap();
        assert_eq!(pt, v["plaintext_utf8"].as_str().unwrap().as_bytes());
    }

    #[test]
    fn fast_and_unclamped_key_files_open() {
        let v = vectors("crafted/crafted-v2.json");
        let expect = master_from(&v["master_key"]);
        for (case, pw) in [
            ("fast_key_file", "fast-key-password"),
            ("unclamped_r_key_file", "unclamped-r-password"),
        ] {
            let kf: KeyFile =
                serde_json::from_str(v[case]["file_content_utf8"].as_str().unwrap()).unwrap();
            let k = kf.open(pw.as_bytes()).unwrap();
            assert_eq!(k.encrypt, expect.encrypt);
            assert_eq!(clamp(&k.mac_r), clamp(&expect.mac_r));
            assert_eq!(kf.open(b"wrong"), Err(CryptoError::Mac));
        }
    }

    #[test]
    fn real_key_file_kat_with_calibrated_params() {
        let v = vectors("repo-v2/kat-kdf-and-key-file.json");
        let kf: KeyFile = serde_json::from_value(v["key_file_json"].clone()).unwrap();
        let salt = h(&v["scrypt"]["salt_hex"]);
        let user = derive_user_key(b"fixture-password", &salt, kf.n, kf.r, kf.p).unwrap();
        assert_eq!(user.encrypt.to_vec(), h(&v["user_key"]["encrypt_hex"]));
        let k = kf.open(b"fixture-password").unwrap();
        assert_eq!(k.encrypt.to_vec(), h(&v["master_key"]["encrypt_hex"]));
    }

    #[test]
    fn seal_open_roundtrip_and_short_input() {
        let k = Key::random();
        for len in [0usize, 1, 15, 16, 17, 1000] {
            let pt = vec![7u8; len];
            let s = k.seal(&pt);
            assert_eq!(s.len(), len + OVERHEAD);
            assert_eq!(k.open(&s).unwrap(), pt);
        }
        assert_eq!(k.open(&[1u8; 31]), Err(CryptoError::TooShort(31)));
        let kf = KeyFile::create(&k, b"pw", (1024, 8, 1), "u", "h").unwrap();
        assert_eq!(kf.open(b"pw").unwrap(), k);
    }
}
