//! How a stored password turns into the bytes that open a repository.
//!
//! restic reads `--password-file` and `--password-command` output without the trailing line
//! break, and users create Kubernetes Secrets from files that usually end in one. Applying
//! the same rule everywhere a password enters fleetsnap — the CLI, the systemd credential in
//! `run`, and the operator's own maintenance runs — means one Secret opens the repository in
//! every path, including a break-glass `restic --password-file` with the same content.

/// Drops trailing CR/LF bytes; everything else, including other whitespace, is kept.
pub fn normalize(mut v: Vec<u8>) -> Vec<u8> {
    while v.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        v.pop();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn strips_only_trailing_line_breaks() {
        assert_eq!(normalize(b"secret\n".to_vec()), b"secret");
        assert_eq!(normalize(b"secret\r\n".to_vec()), b"secret");
        assert_eq!(normalize(b" sec\nret \n".to_vec()), b" sec\nret ");
        assert_eq!(normalize(b"\n".to_vec()), b"");
    }
}
