//! Rendering of the per-job files: the executor config (JSON) and the systemd units.
//!
//! Rendering is deterministic (same inputs ⇒ same bytes) because idempotence is decided by
//! comparing content hashes with what the host has. Secrets are not inputs here at all: the
//! units only name credential files, and the config only names credential ids.

use fleetsnap_contract::{CONFIG_FORMAT, CredentialIds, JobConfig, StdinSource};

use std::collections::BTreeMap;

use super::layout::{self, JobId};
use super::model::{PolicyKind, PolicySpec};
use super::profile::{
    CredentialMode, HostProfile, SYSTEMD_ENCRYPTED_CREDENTIAL, SYSTEMD_LOAD_CREDENTIAL,
};

/// The job config. `credentials` lists the job's (credential id, file) pairs; the config
/// names those ids and no others. In [`CredentialMode::File`] it also names the files, which
/// the executor then opens itself (no `LoadCredential=` on that systemd).
pub fn config_json(
    job: &JobId,
    policy: &PolicySpec,
    credentials: &[(String, String)],
    mode: CredentialMode,
) -> Vec<u8> {
    let has = |id: &str| {
        credentials
            .iter()
            .any(|(c, _)| c == id)
            .then(|| id.to_string())
    };
    let credential_files: BTreeMap<String, String> = match mode {
        CredentialMode::File => credentials.iter().cloned().collect(),
        CredentialMode::Encrypted | CredentialMode::LoadCredential => BTreeMap::new(),
    };
    let cfg = JobConfig {
        format: CONFIG_FORMAT,
        policy: policy.name.clone(),
        kind: policy.kind,
        repository: policy.repository.clone(),
        paths: policy.paths.clone(),
        excludes: policy.excludes.clone(),
        exclude_caches: policy.exclude_caches,
        one_file_system: policy.one_file_system,
        stdin: policy
            .stdin_sources
            .iter()
            // The derived command already runs the source as its user (`runuser`).
            .map(|s| StdinSource {
                name: s.name.clone(),
                command: s.command.clone(),
                filename: s.filename.clone(),
                user: None,
            })
            .collect(),
        tags: policy.tags.clone(),
        host: policy.host_tag.clone(),
        extra_args: policy.extra_args.clone(),
        credentials: CredentialIds {
            repository_password: layout::CRED_REPOSITORY_PASSWORD.into(),
            aws_access_key_id: has(layout::CRED_AWS_ACCESS_KEY_ID),
            aws_secret_access_key: has(layout::CRED_AWS_SECRET_ACCESS_KEY),
            aws_session_token: has(layout::CRED_AWS_SESSION_TOKEN),
            rest_username: has(layout::CRED_REST_USERNAME),
            rest_password: has(layout::CRED_REST_PASSWORD),
        },
        run_record_dir: job.runs_dir(),
        cache_dir: layout::CACHE_DIR.into(),
        aws_credential_process: policy.credential_process.clone(),
        lock_wait_seconds: policy.lock_wait_sec,
        credential_files,
    };
    let mut out = serde_json::to_vec_pretty(&cfg).expect("config serializes");
    out.push(b'\n');
    out
}

/// Values that end up in a unit file must stay on their line: a newline in an OnCalendar
/// value would let a spec inject arbitrary directives (ExecStartPre=...).
pub fn validate_unit_value(field: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if value
        .chars()
        .any(|c| c.is_control() || c == '\\' || c == '%')
    {
        return Err(format!(
            "{field} {value:?} contains control characters, '\\' or '%', which systemd would interpret"
        ));
    }
    Ok(())
}

const HEADER: &str = "# Managed by fleetsnap-operator. Local changes are overwritten.\n";

/// Sandbox directives of the service and the systemd version that introduced each. An older
/// systemd warns about an unknown directive and runs the service without it, so a directive
/// is written only where it takes effect; docs/security.md lists what each version loses.
pub const SANDBOX: &[(&str, u32)] = &[
    ("PrivateTmp=yes", 0),
    ("NoNewPrivileges=yes", 187),
    ("ProtectKernelTunables=yes", 232),
    ("ProtectKernelModules=yes", 232),
    ("ProtectKernelLogs=yes", 244),
    ("ProtectControlGroups=yes", 232),
    ("ProtectClock=yes", 245),
    ("ProtectHostname=yes", 242),
    ("RestrictSUIDSGID=yes", 242),
    ("RestrictRealtime=yes", 231),
    ("RestrictNamespaces=yes", 233),
    ("LockPersonality=yes", 235),
    // The executor is native code without a JIT. Stdin commands that need W+X memory
    // (JIT runtimes) would fail here; none of the usual dump tools do.
    ("MemoryDenyWriteExecute=yes", 231),
    ("SystemCallArchitectures=native", 209),
    // Unix sockets for local dump commands (e.g. PostgreSQL), IP for the repository.
    ("RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", 211),
];
/// `ProtectSystem=strict` (and `ReadWritePaths=`); older systemd gets `ProtectSystem=full`,
/// which leaves /var and the rest outside /usr, /boot and /etc writable.
pub const SYSTEMD_PROTECT_SYSTEM_STRICT: u32 = 232;
/// `RandomizedDelaySec=` in timers; older timers fire at the calendar time on every host.
pub const SYSTEMD_RANDOMIZED_DELAY: u32 = 229;

/// The service unit. `creds` lists (credential id, file path) pairs.
pub fn service_unit(
    job: &JobId,
    policy: &PolicySpec,
    creds: &[(String, String)],
    host: HostProfile,
) -> Vec<u8> {
    let mut u = String::from(HEADER);
    u.push_str("[Unit]\n");
    u.push_str(&format!(
        "Description=fleetsnap {} job for policy {}\n",
        job.kind, job.policy
    ));
    u.push_str("Documentation=https://github.com/fleetsnap/fleetsnap\n");
    // Repositories are remote; a run started before the network is up would just fail.
    u.push_str("Wants=network-online.target\nAfter=network-online.target\n");
    u.push_str("\n[Service]\nType=oneshot\n");
    u.push_str(&format!(
        "ExecStart={} run --config {}\n",
        layout::BIN_LINK,
        job.config_path()
    ));
    // Secrets reach the executor through $CREDENTIALS_DIRECTORY (a private ramfs set up by
    // systemd for this service) where systemd can load credentials; the unit names files,
    // never contents. Older systemd: the config names the root-only files instead.
    let directive = match host.credentials {
        CredentialMode::Encrypted => Some("LoadCredentialEncrypted"),
        CredentialMode::LoadCredential => Some("LoadCredential"),
        CredentialMode::File => None,
    };
    debug_assert!(match host.credentials {
        CredentialMode::Encrypted => host.systemd >= SYSTEMD_ENCRYPTED_CREDENTIAL,
        CredentialMode::LoadCredential => host.systemd >= SYSTEMD_LOAD_CREDENTIAL,
        CredentialMode::File => true,
    });
    if let Some(directive) = directive {
        for (id, path) in creds {
            u.push_str(&format!("{directive}={id}:{path}\n"));
        }
    }
    u.push_str("UMask=0077\n");

    u.push_str("\n# Sandbox\n");
    if host.systemd >= SYSTEMD_PROTECT_SYSTEM_STRICT {
        // The whole OS is read-only; only the state (run records, repository locks) and
        // cache directories are writable.
        u.push_str("ProtectSystem=strict\n");
        u.push_str(&format!(
            "ReadWritePaths={} {}\n",
            layout::STATE_DIR,
            layout::CACHE_DIR
        ));
    } else {
        u.push_str("ProtectSystem=full\n");
    }
    let reads_host_files = job.kind == PolicyKind::Backup;
    // Backups must read home directories; retention and verify only talk to the repository.
    u.push_str(if reads_host_files {
        "ProtectHome=read-only\n"
    } else {
        "ProtectHome=yes\n"
    });
    for (line, since) in SANDBOX {
        if host.systemd >= *since {
            u.push_str(line);
            u.push('\n');
        }
    }
    u.push_str(&capabilities_comment_and_line(job.kind, policy));

    u.push_str("\n# Resource controls from the policy\n");
    if let Some(n) = policy.nice {
        u.push_str(&format!("Nice={n}\n"));
    }
    if let Some(c) = policy.io_scheduling_class {
        u.push_str(&format!("IOSchedulingClass={}\n", c.as_systemd()));
    }
    if let Some(p) = policy.io_scheduling_priority {
        u.push_str(&format!("IOSchedulingPriority={p}\n"));
    }
    if let Some(q) = policy.cpu_quota_percent {
        u.push_str(&format!("CPUQuota={q}%\n"));
    }
    if let Some(secs) = policy.max_runtime_sec {
        u.push_str(&max_runtime_lines(secs));
    }
    u.into_bytes()
}

/// The bound on one run. A `Type=oneshot` service stays "activating" until its process
/// exits, so the start timeout is what ends a hung run; systemd disables it for oneshot
/// units by default. `RuntimeMaxSec=` is not written: systemd ignores it for oneshot
/// services and warns about it on every load ("has no effect in combination with
/// Type=oneshot"). When the time is up systemd sends SIGTERM, then SIGKILL after
/// `TimeoutStopSec=` (90 s), and the service fails with result `timeout`.
fn max_runtime_lines(secs: u64) -> String {
    format!(
        "\n# Longest one run may take (the policy's schedule.maxRuntime); for a oneshot\n\
         # service this, not RuntimeMaxSec=, is the limit.\nTimeoutStartSec={secs}\n"
    )
}

/// The service runs as root, but with a capability bounding set, so "root" only means
/// owning /var/lib/fleetsnap plus the listed capabilities.
fn capabilities_comment_and_line(kind: PolicyKind, policy: &PolicySpec) -> String {
    match kind {
        PolicyKind::Backup if policy.stdin_sources.is_empty() => {
            "# Read every file regardless of permissions, without being able to write them.\n\
             CapabilityBoundingSet=CAP_DAC_READ_SEARCH\n"
                .to_string()
        }
        PolicyKind::Backup => {
            // Dump commands usually must run as the database's own user
            // (`runuser -u postgres -- pg_dumpall`), which needs setuid/setgid. NoNewPrivileges
            // still blocks setuid binaries, so this does not widen to arbitrary escalation.
            "# Read every file; CAP_SETUID/CAP_SETGID let stdin commands switch to the\n\
             # database user (runuser -u postgres -- pg_dumpall).\n\
             CapabilityBoundingSet=CAP_DAC_READ_SEARCH CAP_SETUID CAP_SETGID\n"
                .to_string()
        }
        PolicyKind::Retention | PolicyKind::Verify => {
            "# Talks only to the repository and its own state: no capabilities at all.\n\
             CapabilityBoundingSet=\n"
                .to_string()
        }
    }
}

pub fn timer_unit(job: &JobId, policy: &PolicySpec, host: HostProfile) -> Vec<u8> {
    let mut u = String::from(HEADER);
    u.push_str("[Unit]\n");
    u.push_str(&format!(
        "Description=schedule of fleetsnap {} job for policy {}\n",
        job.kind, job.policy
    ));
    u.push_str("\n[Timer]\n");
    u.push_str(&format!("OnCalendar={}\n", policy.on_calendar.trim()));
    if host.systemd >= SYSTEMD_RANDOMIZED_DELAY {
        u.push_str(&format!(
            "RandomizedDelaySec={}\n",
            policy.randomized_delay_sec
        ));
    }
    u.push_str(&format!(
        "Persistent={}\n",
        if policy.persistent { "true" } else { "false" }
    ));
    // The default (1 min) would add a second, unrandomized skew on top of
    // RandomizedDelaySec; 1 s keeps the schedule what the policy says.
    u.push_str("AccuracySec=1s\n");
    u.push_str(&format!("Unit={}\n", job.service_unit()));
    u.push_str("\n[Install]\nWantedBy=timers.target\n");
    u.into_bytes()
}
