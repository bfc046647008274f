//! Observed host facts: what the planner compares the desired state against.
//!
//! Facts are collected with one remote script per reconcile (one round trip matters on slow
//! hosts) and parsed here as pure code. The script prints tab-separated records; paths come
//! from [`super::layout`] and never contain tabs or newlines.

use std::collections::BTreeMap;

use crate::limits::{MAX_FACT_VALUE, bounded};

/// Longest line [`parse_gather_output`] accepts: a path (PATH_MAX 4096) and its metadata.
pub const MAX_FACT_LINE: usize = 8192;

/// Paths and units the planner wants facts about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FactQuery {
    /// Plain files: hash the content.
    pub files: Vec<String>,
    /// Large plain files (the executor): hashed once, then the hash is reused while size,
    /// mtime, ctime and inode are unchanged, for at most a day (a memo next to the file).
    pub large_files: Vec<String>,
    /// `systemd-creds encrypt` output: hash the decrypted content (on the host; the secret
    /// itself never travels back).
    pub encrypted_files: Vec<String>,
    pub dirs: Vec<String>,
    pub links: Vec<String>,
    pub units: Vec<String>,
    /// Directories to scan for what an interrupted write leaves: temp files
    /// (`.<name>.fleetsnap-tmp`, `.fleetsnap.upload`) and half-made links (`*.fleetsnap-new`).
    pub debris_dirs: Vec<String>,
    /// Directories whose every entry is debris (unit staging: staged units are moved or
    /// deleted within the same action, so anything found there was left by a kill).
    pub scratch_dirs: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileFact {
    /// sha256 of the content (for encrypted credentials: of the decrypted content).
    pub sha256: String,
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirFact {
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitFact {
    /// `systemctl is-enabled` output (`enabled`, `disabled`, `not-found`, ...).
    pub enabled: String,
    /// `systemctl is-active` output (`active`, `inactive`, `failed`, ...).
    pub active: String,
    /// systemd's `NeedDaemonReload`: the unit file on disk differs from what systemd has
    /// loaded (an install whose daemon-reload never ran, e.g. the operator was killed).
    pub needs_reload: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub arch: String,
    pub kernel: String,
    /// First line of `systemctl --version`, e.g. `systemd 252 (252.33-1~deb12u1)`; empty
    /// on a host where systemd is not the running init system.
    pub systemd: String,
    /// `getconf GNU_LIBC_VERSION`, e.g. `glibc 2.31`; `None` without glibc (musl).
    pub libc: Option<String>,
    /// `PRETTY_NAME` of /etc/os-release, e.g. `Debian GNU/Linux 11 (bullseye)`.
    pub os: String,
    /// `systemd-creds has-tpm2` verdict (`yes`, `partial`, `no`), if the tool exists.
    pub tpm2: Option<String>,
    /// A probe `systemd-creds encrypt` succeeded, so credentials are stored encrypted.
    pub creds_encrypt: bool,
    /// Present files (absent ones are simply missing from the map).
    pub files: BTreeMap<String, FileFact>,
    pub dirs: BTreeMap<String, DirFact>,
    /// Symlink → target.
    pub links: BTreeMap<String, String>,
    pub units: BTreeMap<String, UnitFact>,
    /// Leftovers of interrupted writes (see [`FactQuery::debris_dirs`]), sorted.
    pub debris: Vec<String>,
}

impl HostFacts {
    pub fn systemd_version(&self) -> Option<u32> {
        self.systemd.split_whitespace().nth(1)?.parse().ok()
    }

    pub fn unit_installed(&self, unit: &str) -> bool {
        self.units
            .get(unit)
            .is_some_and(|u| !matches!(u.enabled.as_str(), "" | "not-found"))
    }
}

/// The remote fact-gathering script. Arguments: groups introduced by `-f` (plain files),
/// `-F` (large plain files, hash memoized),
/// `-e` (encrypted credentials), `-d` (dirs), `-l` (links), `-u` (units), `-x` (dirs to
/// scan for temp-file debris), `-s` (dirs whose every entry is debris).
///
/// Encrypted credentials are decrypted into a pipe to sha256sum; their plaintext is never
/// printed. The encryption probe encrypts a constant, not a secret.
pub const GATHER_SCRIPT: &str = r#"
set -u
printf 'sys\tarch\t%s\n' "$(uname -m)"
printf 'sys\tkernel\t%s\n' "$(uname -r)"
# systemd is the init system only if /run/systemd/system exists (sd_booted(3)): systemctl is
# often installed where something else is PID 1 (containers, sysvinit appliances).
if [ -d /run/systemd/system ]; then
  printf 'sys\tsystemd\t%s\n' "$(systemctl --version 2>/dev/null | head -n1)"
else
  printf 'sys\tsystemd\t\n'
fi
printf 'sys\tlibc\t%s\n' "$(getconf GNU_LIBC_VERSION 2>/dev/null | head -n1)"
printf 'sys\tos\t%s\n' "$( (. /etc/os-release && printf '%s' "${PRETTY_NAME:-}") 2>/dev/null | tr -d '\t\r\n')"
if command -v systemd-creds >/dev/null 2>&1; then
  printf 'sys\ttpm2\t%s\n' "$(systemd-creds has-tpm2 2>/dev/null | head -n1)"
  if printf probe | systemd-creds encrypt --name=fleetsnap-probe - - >/dev/null 2>&1; then
    printf 'sys\tcreds\tencrypt\n'
  fi
fi
meta() { stat -c '%a	%U	%G' -- "$1"; }
# sha256 of a large file, memoized in .<name>.fleetsnap-sum beside it. Any write changes the
# ctime, which no tool can set back, so a kept size and mtime do not hide a change.
memo_sum() {
  m="${1%/*}/.${1##*/}.fleetsnap-sum"
  k=$(stat -c '%s %.9Y %.9Z %i' -- "$1")
  if [ -f "$m" ] && [ ! -L "$m" ] && [ -n "$(find "$m" -mmin -1440 2>/dev/null)" ]; then
    read -r m1 m2 m3 m4 mh < "$m" || true
    if [ "$m1 $m2 $m3 $m4" = "$k" ] && [ ${#mh} -eq 64 ]; then echo "$mh"; return; fi
  fi
  h=$(sha256sum -- "$1" | cut -d' ' -f1)
  # The temporary name matches the debris pattern, so a gather killed here is cleaned up.
  t="$m.fleetsnap-tmp"
  { printf '%s %s\n' "$k" "$h" > "$t" && mv -f "$t" "$m"; } 2>/dev/null || rm -f "$t"
  echo "$h"
}
mode=f
for a in "$@"; do
  case "$a" in
    -f|-F|-e|-d|-l|-u|-x|-s) mode=${a#-}; continue ;;
  esac
  case "$mode" in
    f) if [ -f "$a" ] && [ ! -L "$a" ]; then
         h=$(sha256sum -- "$a" | cut -d' ' -f1)
         printf 'file\t%s\t%s\t%s\n' "$a" "$(meta "$a")" "$h"
       fi ;;
    F) if [ -f "$a" ] && [ ! -L "$a" ]; then
         printf 'file\t%s\t%s\t%s\n' "$a" "$(meta "$a")" "$(memo_sum "$a")"
       fi ;;
    e) if [ -f "$a" ]; then
         id=${a##*.}
         # Decrypt twice: a pipeline's status is sha256sum's, which would hide a failure.
         if systemd-creds decrypt --name="$id" "$a" - >/dev/null 2>&1; then
           h=$(systemd-creds decrypt --name="$id" "$a" - | sha256sum | cut -d' ' -f1)
         else h=undecryptable; fi
         printf 'file\t%s\t%s\t%s\n' "$a" "$(meta "$a")" "$h"
       fi ;;
    d) if [ -d "$a" ]; then printf 'dir\t%s\t%s\n' "$a" "$(meta "$a")"; fi ;;
    l) if [ -L "$a" ]; then printf 'link\t%s\t%s\n' "$a" "$(readlink -- "$a")"; fi ;;
    u) printf 'unit\t%s\t%s\t%s\t%s\n' "$a" "$(systemctl is-enabled -- "$a" 2>/dev/null | head -n1)" \
         "$(systemctl is-active -- "$a" 2>/dev/null | head -n1)" \
         "$(systemctl show -p NeedDaemonReload --value -- "$a" 2>/dev/null | head -n1)" ;;
    x) for p in "$a"/.*.fleetsnap-tmp "$a"/.fleetsnap.upload "$a"/*.fleetsnap-new; do
         if [ -e "$p" ] || [ -L "$p" ]; then printf 'debris\t%s\n' "$p"; fi
       done ;;
    s) for p in "$a"/* "$a"/.[!.]*; do
         if [ -e "$p" ] || [ -L "$p" ]; then printf 'debris\t%s\n' "$p"; fi
       done ;;
  esac
done
"#;

pub fn gather_args(q: &FactQuery) -> Vec<String> {
    let mut args = Vec::new();
    for (flag, list) in [
        ("-f", &q.files),
        ("-F", &q.large_files),
        ("-e", &q.encrypted_files),
        ("-d", &q.dirs),
        ("-l", &q.links),
        ("-u", &q.units),
        ("-x", &q.debris_dirs),
        ("-s", &q.scratch_dirs),
    ] {
        args.push(flag.to_string());
        args.extend(list.iter().cloned());
    }
    args
}

/// Parses [`GATHER_SCRIPT`] output. Unknown record types are an error rather than being
/// skipped, so a drifted script is noticed in tests and not as a wrong plan in production.
pub fn parse_gather_output(out: &str) -> Result<HostFacts, String> {
    let mut f = HostFacts::default();
    let value = |v: &str| bounded(v, MAX_FACT_VALUE);
    for line in out.lines().filter(|l| !l.is_empty()) {
        // Paths are at most PATH_MAX; a longer line is not one the script prints.
        if line.len() > MAX_FACT_LINE {
            return Err(format!(
                "a line of {} bytes (more than {MAX_FACT_LINE}) starting {:?}",
                line.len(),
                bounded(line, 80)
            ));
        }
        let cols: Vec<&str> = line.split('\t').collect();
        match cols.as_slice() {
            ["sys", "arch", v] => f.arch = value(v),
            ["sys", "kernel", v] => f.kernel = value(v),
            ["sys", "systemd", v] => f.systemd = value(v),
            ["sys", "libc", v] => f.libc = Some(value(v)).filter(|v| !v.is_empty()),
            ["sys", "os", v] => f.os = value(v),
            ["sys", "tpm2", v] => f.tpm2 = Some(value(v)),
            ["sys", "creds", "encrypt"] => f.creds_encrypt = true,
            ["file", path, mode, owner, group, sha] => {
                f.files.insert(
                    path.to_string(),
                    FileFact {
                        sha256: sha.to_string(),
                        mode: parse_mode(mode)?,
                        owner: owner.to_string(),
                        group: group.to_string(),
                    },
                );
            }
            ["dir", path, mode, owner, group] => {
                f.dirs.insert(
                    path.to_string(),
                    DirFact {
                        mode: parse_mode(mode)?,
                        owner: owner.to_string(),
                        group: group.to_string(),
                    },
                );
            }
            ["link", path, target] => {
                f.links.insert(path.to_string(), target.to_string());
            }
            ["unit", name, enabled, active, rest @ ..] if rest.len() <= 1 => {
                f.units.insert(
                    name.to_string(),
                    UnitFact {
                        enabled: enabled.to_string(),
                        active: active.to_string(),
                        needs_reload: rest.first() == Some(&"yes"),
                    },
                );
            }
            ["debris", path] => f.debris.push(path.to_string()),
            _ => return Err(format!("unexpected line {:?}", bounded(line, 200))),
        }
    }
    if f.arch.is_empty() {
        return Err("no architecture reported".into());
    }
    f.debris.sort();
    f.debris.dedup();
    Ok(f)
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|_| format!("bad mode {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_record_kinds() {
        let out = "sys\tarch\tx86_64\nsys\tkernel\t6.1.0\nsys\tsystemd\tsystemd 252 (252.33-1~deb12u1)\n\
                   sys\tlibc\tglibc 2.36\nsys\tos\tDebian GNU/Linux 12 (bookworm)\n\
                   sys\ttpm2\tpartial\nsys\tcreds\tencrypt\n\
                   file\t/etc/fleetsnap/a.json\t644\troot\troot\tabc\n\
                   dir\t/var/lib/fleetsnap\t755\troot\troot\n\
                   link\t/usr/local/bin/fleetsnap\t/usr/local/lib/fleetsnap/1/fleetsnap\n\
                   unit\tx.timer\tenabled\tactive\nunit\ty.timer\t\tinactive\n\
                   debris\t/etc/fleetsnap/.staging/x.timer\ndebris\t/etc/fleetsnap/.a.json.fleetsnap-tmp\n";
        let f = parse_gather_output(out).unwrap();
        assert_eq!(
            f.debris,
            [
                "/etc/fleetsnap/.a.json.fleetsnap-tmp",
                "/etc/fleetsnap/.staging/x.timer"
            ]
        );
        assert_eq!(f.systemd_version(), Some(252));
        assert_eq!(f.libc.as_deref(), Some("glibc 2.36"));
        assert_eq!(f.os, "Debian GNU/Linux 12 (bookworm)");
        assert!(f.creds_encrypt);
        assert_eq!(f.files["/etc/fleetsnap/a.json"].mode, 0o644);
        assert_eq!(f.dirs["/var/lib/fleetsnap"].mode, 0o755);
        assert!(f.unit_installed("x.timer"));
        assert!(!f.unit_installed("y.timer"));
        assert!(!f.unit_installed("z.timer"));
    }

    #[test]
    fn large_files_go_to_the_memoized_group() {
        let q = FactQuery {
            files: vec!["/etc/a".into()],
            large_files: vec!["/usr/local/lib/fleetsnap/1/fleetsnap".into()],
            ..FactQuery::default()
        };
        let args = gather_args(&q);
        let at = |flag: &str| args.iter().position(|a| a == flag).unwrap();
        assert_eq!(args[at("-f") + 1], "/etc/a");
        assert_eq!(args[at("-F") + 1], "/usr/local/lib/fleetsnap/1/fleetsnap");
        assert_eq!(
            at("-F") + 2,
            at("-e"),
            "the large file is the only -F argument"
        );
        // The memo's temporary file is named so that a killed gather leaves recognised debris.
        assert!(GATHER_SCRIPT.contains(r#"t="$m.fleetsnap-tmp""#));
        assert!(GATHER_SCRIPT.contains(r#""$a"/.*.fleetsnap-tmp"#));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_gather_output("sys\tarch\tx86_64\nwat\n").is_err());
        assert!(parse_gather_output("").is_err());
    }

    #[test]
    fn host_provided_values_are_bounded() {
        let long = format!("sys\tarch\tx86_64\nsys\tkernel\t{}\n", "6".repeat(5000));
        let f = parse_gather_output(&long).unwrap();
        assert!(f.kernel.len() <= MAX_FACT_VALUE + '…'.len_utf8());
        let huge = format!(
            "sys\tarch\tx86_64\ndebris\t/{}\n",
            "d".repeat(MAX_FACT_LINE)
        );
        let e = parse_gather_output(&huge).unwrap_err();
        assert!(e.len() < 300 && e.contains("more than 8192"), "{e}");
    }
}
