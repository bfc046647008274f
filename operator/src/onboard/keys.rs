//! Host keys: what `ssh-keyscan` printed, read back bounded, and the SHA256 fingerprint that
//! `ssh-keygen -l` shows for it, so a person can compare it with the console of the host.

use std::io::Read;
use std::process::{Command, Stdio};

use base64::Engine;
use sha2::{Digest, Sha256};

/// Key types in the order they are preferred; the CRD accepts these.
pub const KEY_TYPES: [&str; 5] = [
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
];

/// More than any honest answer (a few keys of at most a few KiB).
const MAX_SCAN_OUTPUT: u64 = 64 * 1024;

/// `<type> <base64>` of the preferred key among `ssh-keyscan` output lines
/// (`host type base64`), or why there is none.
pub fn pick(scan_output: &str) -> Result<String, String> {
    let mut found: Vec<(usize, String)> = Vec::new();
    for line in scan_output.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut w = line.split_whitespace();
        let (Some(_host), Some(kind), Some(blob)) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        let Some(rank) = KEY_TYPES.iter().position(|t| *t == kind) else {
            continue;
        };
        if decode(blob).is_none() {
            return Err(format!("the {kind} key it sent is not valid base64"));
        }
        found.push((rank, format!("{kind} {blob}")));
    }
    found.sort();
    found
        .into_iter()
        .next()
        .map(|(_, k)| k)
        .ok_or_else(|| "no host key answered (is sshd listening there?)".to_string())
}

fn decode(blob: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(blob).ok()
}

/// `SHA256:<unpadded base64 of the key blob's digest>`, as `ssh-keygen -lf` prints it.
pub fn fingerprint(key_line: &str) -> Option<String> {
    let blob = decode(key_line.split_whitespace().nth(1)?)?;
    let digest = Sha256::digest(&blob);
    Some(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    ))
}

/// Runs `ssh-keyscan` for one host; its output is read up to a bound.
pub fn scan(address: &str, port: u16, timeout_secs: u32) -> Result<String, String> {
    let mut child = Command::new("ssh-keyscan")
        .args(["-T", &timeout_secs.to_string(), "-p", &port.to_string()])
        .args(["-t", "ed25519,ecdsa,rsa", "--", address])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run ssh-keyscan: {e} (hint: install openssh-client)"))?;
    let mut out = String::new();
    let read = child
        .stdout
        .take()
        .expect("piped")
        .take(MAX_SCAN_OUTPUT)
        .read_to_string(&mut out);
    let _ = child.kill();
    let _ = child.wait();
    read.map_err(|e| format!("reading ssh-keyscan's output: {e}"))?;
    pick(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh ed25519 key line from ssh-keygen, and ssh-keygen's fingerprint of it.
    fn real_key() -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        let made = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&f)
            .status();
        assert!(
            made.is_ok_and(|s| s.success()),
            "ssh-keygen is missing: install openssh-client to run this test"
        );
        let line = std::fs::read_to_string(dir.path().join("k.pub")).unwrap();
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(dir.path().join("k.pub"))
            .output()
            .unwrap();
        let fp = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string();
        let mut w = line.split_whitespace();
        (format!("{} {}", w.next().unwrap(), w.next().unwrap()), fp)
    }

    #[test]
    fn the_preferred_key_is_picked_and_garbage_is_skipped() {
        let (key, _) = real_key();
        let out = format!(
            "# 127.0.0.1:22 SSH-2.0-OpenSSH_9.2\n[127.0.0.1]:2222 ssh-rsa AAAAB3NzaC1yc2E=\n[127.0.0.1]:2222 {key}\nnot a key line\n"
        );
        assert_eq!(pick(&out).unwrap(), key);
        assert_eq!(
            pick("h ssh-rsa AAAAB3NzaC1yc2E=\n").unwrap(),
            "ssh-rsa AAAAB3NzaC1yc2E="
        );
        assert!(pick("").unwrap_err().contains("no host key"));
        assert!(pick("h ssh-ed25519 !!!\n").unwrap_err().contains("base64"));
        assert!(
            pick("h ssh-dss AAAAB3NzaC1kc3M=\n").is_err(),
            "DSA is not accepted"
        );
    }

    #[test]
    fn fingerprints_are_ssh_keygens() {
        let (key, theirs) = real_key();
        assert_eq!(fingerprint(&key).unwrap(), theirs);
        assert_eq!(fingerprint("ssh-ed25519 !!!"), None);
    }
}
