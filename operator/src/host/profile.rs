//! What a host can run, decided from its facts before anything is written to it: whether the
//! executor starts there at all (architecture, C library), and how its jobs get their
//! credentials and hardening from the host's systemd.
//!
//! The rule up front: a host the executor cannot run on, or whose service manager fleetsnap
//! cannot drive, gets nothing installed. A half-installed job (an executor that does not
//! start, a unit whose credential directive the host's systemd ignores) would fail at the
//! first scheduled run, long after the operator could have said why.

use std::fmt;

use super::facts::HostFacts;

/// The one architecture the executor is built for.
pub const EXECUTOR_ARCH: &str = "x86_64";
/// The glibc the pushed executor is linked against (`deploy/build-executor.sh` checks the
/// binary's symbol versions against it).
pub const GLIBC_FLOOR: (u32, u32) = (2, 17);
/// Oldest systemd whose timers and services the rendered units rely on (Amazon Linux 2).
pub const SYSTEMD_FLOOR: u32 = 219;
/// `LoadCredential=`.
pub const SYSTEMD_LOAD_CREDENTIAL: u32 = 247;
/// `LoadCredentialEncrypted=` and `systemd-creds`.
pub const SYSTEMD_ENCRYPTED_CREDENTIAL: u32 = 250;

/// How a job's secrets reach the executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialMode {
    /// `systemd-creds encrypt`ed files, `LoadCredentialEncrypted=` (systemd ≥ 250 with a
    /// working credential key).
    Encrypted,
    /// Root-only files loaded by systemd with `LoadCredential=` into the service's private
    /// credentials directory (systemd ≥ 247).
    LoadCredential,
    /// Root-only files the executor opens itself, named in the job config (systemd < 247).
    File,
}

impl CredentialMode {
    /// The word recorded in `Host.status.os.credentialMode`.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialMode::Encrypted => "encrypted",
            CredentialMode::LoadCredential => "load-credential",
            CredentialMode::File => "file",
        }
    }

    /// Credentials are stored encrypted on the host.
    pub fn encrypted(self) -> bool {
        self == CredentialMode::Encrypted
    }
}

impl fmt::Display for CredentialMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the planner renders for one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostProfile {
    /// systemd's major version; unit directives newer than it are left out.
    pub systemd: u32,
    pub credentials: CredentialMode,
}

/// Why nothing is installed on a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unsupported {
    Architecture(String),
    NoGlibc,
    OldGlibc(String),
    NoSystemd,
    OldSystemd(u32),
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ma, mi) = GLIBC_FLOOR;
        match self {
            Unsupported::Architecture(a) => write!(
                f,
                "architecture {a:?} is not supported: the executor is built for {EXECUTOR_ARCH} only"
            ),
            Unsupported::NoGlibc => write!(
                f,
                "no GNU C library found (`getconf GNU_LIBC_VERSION` failed; musl hosts such as \
                 Alpine are not supported): the executor needs glibc {ma}.{mi} or newer"
            ),
            Unsupported::OldGlibc(v) => {
                write!(f, "{v} is older than the executor's floor, glibc {ma}.{mi}")
            }
            Unsupported::NoSystemd => f.write_str(
                "systemd is not running as the init system (no /run/systemd/system): hosts \
                 without systemd are not supported yet",
            ),
            Unsupported::OldSystemd(v) => write!(
                f,
                "systemd {v} is older than {SYSTEMD_FLOOR}, the oldest whose timers fleetsnap drives"
            ),
        }
    }
}

/// `glibc 2.31` → (2, 31).
pub fn glibc_version(libc: &str) -> Option<(u32, u32)> {
    let v = libc.strip_prefix("glibc ")?;
    let mut parts = v.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    Some((major, minor))
}

/// The decision, in the order a user would want to hear the reasons: a host of another
/// architecture is refused for that even if its systemd is also old.
pub fn profile(facts: &HostFacts) -> Result<HostProfile, Unsupported> {
    if facts.arch != EXECUTOR_ARCH {
        return Err(Unsupported::Architecture(facts.arch.clone()));
    }
    match facts.libc.as_deref() {
        None | Some("") => return Err(Unsupported::NoGlibc),
        Some(libc) => match glibc_version(libc) {
            None => return Err(Unsupported::NoGlibc),
            Some(v) if v < GLIBC_FLOOR => return Err(Unsupported::OldGlibc(libc.to_string())),
            Some(_) => {}
        },
    }
    let systemd = facts.systemd_version().ok_or(Unsupported::NoSystemd)?;
    if systemd < SYSTEMD_FLOOR {
        return Err(Unsupported::OldSystemd(systemd));
    }
    let credentials = if systemd >= SYSTEMD_ENCRYPTED_CREDENTIAL && facts.creds_encrypt {
        CredentialMode::Encrypted
    } else if systemd >= SYSTEMD_LOAD_CREDENTIAL {
        CredentialMode::LoadCredential
    } else {
        CredentialMode::File
    };
    Ok(HostProfile {
        systemd,
        credentials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(arch: &str, libc: Option<&str>, systemd: &str, encrypt: bool) -> HostFacts {
        HostFacts {
            arch: arch.into(),
            libc: libc.map(String::from),
            systemd: systemd.into(),
            creds_encrypt: encrypt,
            ..Default::default()
        }
    }

    /// The table: the fleets users run, each to the mode it gets.
    #[test]
    fn each_kind_of_host_gets_its_mode() {
        use CredentialMode::*;
        for (what, facts, want) in [
            (
                "Debian 12",
                host(
                    "x86_64",
                    Some("glibc 2.36"),
                    "systemd 252 (252.33-1~deb12u1)",
                    true,
                ),
                (252, Encrypted),
            ),
            (
                "systemd 252 whose credential key does not work",
                host("x86_64", Some("glibc 2.36"), "systemd 252 (252.33)", false),
                (252, LoadCredential),
            ),
            (
                "Debian 11",
                host(
                    "x86_64",
                    Some("glibc 2.31"),
                    "systemd 247 (247.3-7+deb11u6)",
                    false,
                ),
                (247, LoadCredential),
            ),
            (
                "Ubuntu 20.04",
                host(
                    "x86_64",
                    Some("glibc 2.31"),
                    "systemd 245 (245.4-4ubuntu3)",
                    false,
                ),
                (245, File),
            ),
            (
                "RHEL 8",
                host(
                    "x86_64",
                    Some("glibc 2.28"),
                    "systemd 239 (239-78.el8)",
                    false,
                ),
                (239, File),
            ),
            (
                "Amazon Linux 2",
                host("x86_64", Some("glibc 2.26"), "systemd 219", false),
                (219, File),
            ),
            (
                "Debian 13",
                host(
                    "x86_64",
                    Some("glibc 2.41"),
                    "systemd 257 (257.8-1~deb13u2)",
                    true,
                ),
                (257, Encrypted),
            ),
        ] {
            let p = profile(&facts).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!((p.systemd, p.credentials), want, "{what}");
        }
    }

    #[test]
    fn hosts_the_executor_cannot_run_on_are_named_and_refused() {
        let cases = [
            (
                host("aarch64", Some("glibc 2.36"), "systemd 252", true),
                "architecture \"aarch64\" is not supported",
            ),
            (
                host("x86_64", None, "systemd 252", true),
                "no GNU C library found",
            ),
            (
                host("x86_64", Some("glibc 2.12"), "systemd 219", false),
                "glibc 2.12 is older than the executor's floor, glibc 2.17",
            ),
            (
                host("x86_64", Some("glibc 2.36"), "", false),
                "systemd is not running as the init system",
            ),
            (
                host("x86_64", Some("glibc 2.17"), "systemd 208", false),
                "systemd 208 is older than 219",
            ),
        ];
        for (facts, want) in cases {
            let e = profile(&facts).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} does not say {want:?}");
        }
    }

    #[test]
    fn glibc_versions_parse_with_vendor_suffixes() {
        assert_eq!(glibc_version("glibc 2.17"), Some((2, 17)));
        assert_eq!(glibc_version("glibc 2.28"), Some((2, 28)));
        assert_eq!(glibc_version("glibc 2.35-0ubuntu3"), Some((2, 35)));
        assert_eq!(glibc_version("musl 1.2"), None);
        assert_eq!(glibc_version("glibc x"), None);
        assert!((2, 9) < GLIBC_FLOOR && (2, 17) >= GLIBC_FLOOR && (3, 0) > GLIBC_FLOOR);
    }
}
