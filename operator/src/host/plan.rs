//! The pure planner: desired state of one job on one host, compared with observed facts,
//! gives the list of actions that converge the host. No I/O happens here.
//!
//! Usage: `fact_query` says what to observe, `apply::gather_facts` observes it, then
//! `plan_job` (or `plan_removal`) decides. A host that already matches yields no actions,
//! which is what makes a second reconcile a no-op.

use std::fmt;

use sha2::{Digest, Sha256};

use super::facts::{FactQuery, HostFacts};
use super::layout::{self, JobId};
use super::model::{Credentials, ExecutorArtifact, PolicySpec, SecretBytes};
use super::profile::{self, HostProfile, Unsupported};
use super::render;

pub const ROOT: &str = "root";

/// Everything the planner needs for one (policy, host) pairing.
#[derive(Clone, Copy, Debug)]
pub struct JobInputs<'a> {
    pub artifact: &'a ExecutorArtifact,
    pub policy: &'a PolicySpec,
    pub credentials: &'a Credentials,
}

#[derive(Clone, PartialEq, Eq)]
pub enum FileContent {
    Public(Vec<u8>),
    Secret(SecretBytes),
}

impl FileContent {
    pub fn bytes(&self) -> &[u8] {
        match self {
            FileContent::Public(b) => b,
            FileContent::Secret(s) => s.expose(),
        }
    }
}

impl fmt::Debug for FileContent {
    // Public content is summarised too: a plan is logged at debug level and whole unit
    // files would drown everything else.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileContent::Public(b) => write!(f, "<{} bytes>", b.len()),
            FileContent::Secret(_) => f.write_str("<redacted>"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileRole {
    Config,
    Unit,
    /// Stored encrypted with `systemd-creds encrypt --name=<id>` when `encrypted`.
    Credential {
        id: String,
        encrypted: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredFile {
    pub path: String,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    /// sha256 of the (plaintext) content.
    pub sha256: String,
    pub content: FileContent,
    pub role: FileRole,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredDir {
    pub path: String,
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredExecutor {
    pub version: String,
    pub sha256: String,
    pub path: String,
    pub local_path: std::path::PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredState {
    pub executor: DesiredExecutor,
    pub dirs: Vec<DesiredDir>,
    /// Config and credentials.
    pub files: Vec<DesiredFile>,
    /// Service first, then timer.
    pub units: Vec<DesiredFile>,
    pub timer: String,
    pub service: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Upload, verify the sha256 on the host, then rename into the versioned path.
    InstallExecutor(DesiredExecutor),
    /// Atomically repoint `/usr/local/bin/fleetsnap`.
    SwitchExecutorLink {
        link: String,
        target: String,
    },
    EnsureDir(DesiredDir),
    /// Atomic write (temp file + rename) with mode and owner set before the rename.
    WriteFile(DesiredFile),
    /// The job's changed credentials: every file staged first, then all renamed into place
    /// by one command, so a rotated key id never sits next to the previous key's token.
    WriteCredentials(Vec<DesiredFile>),
    /// Content is right, only mode or owner drifted.
    SetMetadata {
        path: String,
        mode: u32,
        owner: String,
        group: String,
    },
    /// Stage all of the job's units, `systemd-analyze verify` them, then rename the changed
    /// ones (`changed` are final paths) into the unit directory.
    InstallUnits {
        units: Vec<DesiredFile>,
        changed: Vec<String>,
    },
    DaemonReload,
    /// `systemctl enable --now`.
    EnableTimer {
        unit: String,
    },
    /// The timer definition changed while it was running.
    RestartTimer {
        unit: String,
    },
    /// `systemctl disable --now`.
    DisableTimer {
        unit: String,
    },
    StopService {
        unit: String,
    },
    RemoveFiles {
        paths: Vec<String>,
    },
    ResetFailed {
        units: Vec<String>,
    },
}

impl Action {
    /// Short label for spans and error messages.
    pub fn label(&self) -> String {
        match self {
            Action::InstallExecutor(e) => format!("install executor {}", e.version),
            Action::SwitchExecutorLink { target, .. } => {
                format!("switch executor link to {target}")
            }
            Action::EnsureDir(d) => format!("ensure directory {}", d.path),
            Action::WriteFile(f) => format!("write {}", f.path),
            Action::WriteCredentials(fs) => format!(
                "write credentials {:?}",
                fs.iter().map(|f| f.path.as_str()).collect::<Vec<_>>()
            ),
            Action::SetMetadata { path, .. } => format!("set mode/owner of {path}"),
            Action::InstallUnits { changed, .. } => format!("install units {changed:?}"),
            Action::DaemonReload => "systemctl daemon-reload".into(),
            Action::EnableTimer { unit } => format!("enable {unit}"),
            Action::RestartTimer { unit } => format!("restart {unit}"),
            Action::DisableTimer { unit } => format!("disable {unit}"),
            Action::StopService { unit } => format!("stop {unit}"),
            Action::RemoveFiles { paths } => format!("remove {paths:?}"),
            Action::ResetFailed { units } => format!("reset-failed {units:?}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPlan {
    pub job: JobId,
    /// `None` for a removal plan.
    pub desired: Option<DesiredState>,
    pub actions: Vec<Action>,
}

impl HostPlan {
    pub fn is_noop(&self) -> bool {
        self.actions.is_empty()
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// What to observe before planning `job` (with `artifact` when installing, `None` for a
/// removal).
pub fn fact_query(job: &JobId, artifact: Option<&ExecutorArtifact>) -> FactQuery {
    let mut q = FactQuery {
        files: vec![
            job.config_path(),
            layout::unit_path(&job.service_unit()),
            layout::unit_path(&job.timer_unit()),
        ],
        links: vec![layout::BIN_LINK.to_string()],
        units: vec![job.timer_unit(), job.service_unit()],
        debris_dirs: vec![
            layout::BIN_DIR.to_string(),
            layout::CONFIG_DIR.to_string(),
            layout::CREDSTORE_DIR.to_string(),
            layout::CREDSTORE_ENCRYPTED_DIR.to_string(),
        ],
        scratch_dirs: vec![layout::STAGING_DIR.to_string()],
        ..Default::default()
    };
    for (path, enc) in job.all_credential_paths() {
        if enc {
            q.encrypted_files.push(path);
        } else {
            q.files.push(path);
        }
    }
    if let Some(a) = artifact {
        q.large_files.push(layout::executor_path(&a.version));
        q.debris_dirs.push(layout::executor_dir(&a.version));
        q.dirs = desired_dirs(job, a, false)
            .into_iter()
            .chain(desired_dirs(job, a, true))
            .map(|d| d.path)
            .collect();
        q.dirs.sort();
        q.dirs.dedup();
    }
    q
}

fn dir(path: impl Into<String>, mode: u32) -> DesiredDir {
    DesiredDir {
        path: path.into(),
        mode,
        owner: ROOT.into(),
        group: ROOT.into(),
    }
}

fn desired_dirs(job: &JobId, a: &ExecutorArtifact, encrypted: bool) -> Vec<DesiredDir> {
    vec![
        dir(layout::LIB_DIR, 0o755),
        dir(layout::executor_dir(&a.version), 0o755),
        dir(layout::CONFIG_DIR, 0o755),
        dir(
            if encrypted {
                layout::CREDSTORE_ENCRYPTED_DIR
            } else {
                layout::CREDSTORE_DIR
            },
            0o700,
        ),
        dir(layout::STAGING_DIR, 0o700),
        dir(layout::STATE_DIR, 0o755),
        dir(layout::RUNS_DIR, 0o755),
        dir(job.runs_dir(), 0o750),
        // The repository cache holds decrypted index data.
        dir(layout::CACHE_DIR, 0o700),
    ]
}

fn file(path: String, mode: u32, content: FileContent, role: FileRole) -> DesiredFile {
    DesiredFile {
        sha256: sha256_hex(content.bytes()),
        path,
        mode,
        owner: ROOT.into(),
        group: ROOT.into(),
        content,
        role,
    }
}

fn validate(inputs: &JobInputs<'_>) -> Result<JobId, String> {
    let p = inputs.policy;
    let job = JobId::new(p.kind, &p.name)?;
    layout::validate_version(&inputs.artifact.version)?;
    layout::validate_sha256(&inputs.artifact.sha256)?;
    render::validate_unit_value("onCalendar", &p.on_calendar)?;
    if let Some(n) = p.nice
        && !(-20..=19).contains(&n)
    {
        return Err(format!("nice {n} is outside -20..19"));
    }
    if let Some(prio) = p.io_scheduling_priority
        && prio > 7
    {
        return Err(format!("ioSchedulingPriority {prio} is outside 0..7"));
    }
    if p.max_runtime_sec == Some(0) {
        // systemd reads 0 as "no limit": the opposite of what a limit is for.
        return Err("maxRuntime must be longer than 0 seconds".into());
    }
    if inputs.credentials.repository_password.is_empty() {
        return Err("the repository password is empty".into());
    }
    Ok(job)
}

/// Why a job cannot be planned for a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// The policy or host spec holds a value that cannot be applied.
    Spec(String),
    /// The host cannot run the executor or its units ([`profile`]); nothing is installed.
    Unsupported(Unsupported),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Spec(s) => f.write_str(s),
            PlanError::Unsupported(u) => u.fmt(f),
        }
    }
}

impl From<String> for PlanError {
    fn from(s: String) -> Self {
        PlanError::Spec(s)
    }
}

impl PlanError {
    /// The host layer's error for it, naming the host.
    pub fn for_host(self, host: &str) -> super::HostError {
        match self {
            PlanError::Spec(detail) => super::HostError::InvalidSpec {
                host: host.to_string(),
                detail,
            },
            PlanError::Unsupported(u) => super::HostError::Unsupported {
                host: host.to_string(),
                detail: u.to_string(),
            },
        }
    }
}

/// The desired state alone (no facts). Used by `plan_job` and by tests.
pub fn desired_state(inputs: &JobInputs<'_>, host: HostProfile) -> Result<DesiredState, String> {
    let job = validate(inputs)?;
    let a = inputs.artifact;
    let encrypt = host.credentials.encrypted();

    let mut creds: Vec<(&str, &SecretBytes)> = vec![(
        layout::CRED_REPOSITORY_PASSWORD,
        &inputs.credentials.repository_password,
    )];
    if let Some(aws) = &inputs.credentials.aws {
        creds.push((layout::CRED_AWS_ACCESS_KEY_ID, &aws.access_key_id));
        creds.push((layout::CRED_AWS_SECRET_ACCESS_KEY, &aws.secret_access_key));
        if let Some(token) = &aws.session_token {
            creds.push((layout::CRED_AWS_SESSION_TOKEN, token));
        }
    }
    if let Some(rest) = &inputs.credentials.rest {
        creds.push((layout::CRED_REST_USERNAME, &rest.username));
        creds.push((layout::CRED_REST_PASSWORD, &rest.password));
    }
    // The config names exactly the credentials the unit loads: one list decides both.
    let cred_refs: Vec<(String, String)> = creds
        .iter()
        .map(|(id, _)| (id.to_string(), job.credential_path(id, encrypt)))
        .collect();

    let mut files = vec![file(
        job.config_path(),
        0o644,
        FileContent::Public(render::config_json(
            &job,
            inputs.policy,
            &cred_refs,
            host.credentials,
        )),
        FileRole::Config,
    )];
    for (id, secret) in creds {
        let path = job.credential_path(id, encrypt);
        files.push(file(
            path,
            0o600,
            FileContent::Secret(secret.clone()),
            FileRole::Credential {
                id: id.to_string(),
                encrypted: encrypt,
            },
        ));
    }

    let units = vec![
        file(
            layout::unit_path(&job.service_unit()),
            0o644,
            FileContent::Public(render::service_unit(&job, inputs.policy, &cred_refs, host)),
            FileRole::Unit,
        ),
        file(
            layout::unit_path(&job.timer_unit()),
            0o644,
            FileContent::Public(render::timer_unit(&job, inputs.policy, host)),
            FileRole::Unit,
        ),
    ];

    Ok(DesiredState {
        executor: DesiredExecutor {
            version: a.version.clone(),
            sha256: a.sha256.clone(),
            path: layout::executor_path(&a.version),
            local_path: a.local_path.clone(),
        },
        dirs: desired_dirs(&job, a, encrypt),
        files,
        units,
        timer: job.timer_unit(),
        service: job.service_unit(),
    })
}

enum Drift {
    None,
    Metadata,
    Content,
}

fn drift(f: &DesiredFile, facts: &HostFacts) -> Drift {
    match facts.files.get(&f.path) {
        None => Drift::Content,
        Some(have) if have.sha256 != f.sha256 => Drift::Content,
        Some(have) if have.mode != f.mode || have.owner != f.owner || have.group != f.group => {
            Drift::Metadata
        }
        Some(_) => Drift::None,
    }
}

fn set_metadata(f: &DesiredFile) -> Action {
    Action::SetMetadata {
        path: f.path.clone(),
        mode: f.mode,
        owner: f.owner.clone(),
        group: f.group.clone(),
    }
}

/// What a killed reconcile left (a temp file that may hold half a secret, a staged unit, a
/// dangling link) goes first. Jobs on one host are applied one at a time, so nothing found
/// here can belong to a write in progress.
fn sweep_debris(facts: &HostFacts) -> Vec<Action> {
    if facts.debris.is_empty() {
        return Vec::new();
    }
    vec![Action::RemoveFiles {
        paths: facts.debris.clone(),
    }]
}

/// Plan installing or updating one job. Errors are spec errors (bad names, unsafe values) and
/// hosts that cannot run the job, which get no action at all.
pub fn plan_job(inputs: &JobInputs<'_>, facts: &HostFacts) -> Result<HostPlan, PlanError> {
    let host = profile::profile(facts).map_err(PlanError::Unsupported)?;
    let desired = desired_state(inputs, host)?;
    let job = JobId::new(inputs.policy.kind, &inputs.policy.name)?;
    let mut actions = sweep_debris(facts);

    for d in &desired.dirs {
        let ok = facts
            .dirs
            .get(&d.path)
            .is_some_and(|h| h.mode == d.mode && h.owner == d.owner && h.group == d.group);
        if !ok {
            actions.push(Action::EnsureDir(d.clone()));
        }
    }
    // Directories first: the executor upload writes into its versioned directory.
    let exe = &desired.executor;
    if facts.files.get(&exe.path).map(|f| f.sha256.as_str()) != Some(exe.sha256.as_str()) {
        actions.push(Action::InstallExecutor(exe.clone()));
    }
    if facts.links.get(layout::BIN_LINK) != Some(&exe.path) {
        actions.push(Action::SwitchExecutorLink {
            link: layout::BIN_LINK.into(),
            target: exe.path.clone(),
        });
    }

    // Changed credentials go in one action, where the first of them would have been.
    let mut credentials: Option<usize> = None;
    for f in &desired.files {
        match drift(f, facts) {
            Drift::Content if matches!(f.role, FileRole::Credential { .. }) => match credentials {
                Some(i) => {
                    if let Action::WriteCredentials(fs) = &mut actions[i] {
                        fs.push(f.clone());
                    }
                }
                None => {
                    credentials = Some(actions.len());
                    actions.push(Action::WriteCredentials(vec![f.clone()]));
                }
            },
            Drift::Content => actions.push(Action::WriteFile(f.clone())),
            Drift::Metadata => actions.push(set_metadata(f)),
            Drift::None => {}
        }
    }

    let mut changed_units = Vec::new();
    for u in &desired.units {
        match drift(u, facts) {
            Drift::Content => changed_units.push(u.path.clone()),
            Drift::Metadata => actions.push(set_metadata(u)),
            Drift::None => {}
        }
    }
    let timer_path = layout::unit_path(&desired.timer);
    let timer = facts.units.get(&desired.timer);
    // Files already right but systemd still on the old definitions: an install whose
    // daemon-reload never ran (the operator was killed in between). Finish it, and restart
    // the timer as the interrupted install would have.
    let loaded_stale = |unit: &str| facts.units.get(unit).is_some_and(|u| u.needs_reload);
    let reload_pending = loaded_stale(&desired.timer) || loaded_stale(&desired.service);
    let timer_changed = changed_units.contains(&timer_path) || loaded_stale(&desired.timer);
    if !changed_units.is_empty() {
        actions.push(Action::InstallUnits {
            units: desired.units.clone(),
            changed: changed_units,
        });
        actions.push(Action::DaemonReload);
    } else if reload_pending {
        actions.push(Action::DaemonReload);
    }

    let enabled = timer.is_some_and(|t| t.enabled == "enabled");
    let active = timer.is_some_and(|t| t.active == "active");
    if timer_changed && active {
        actions.push(Action::RestartTimer {
            unit: desired.timer.clone(),
        });
    }
    if !enabled || !active {
        actions.push(Action::EnableTimer {
            unit: desired.timer.clone(),
        });
    }

    // Credentials left over from the other storage mode or from dropped AWS keys go last,
    // after the units stopped referring to them.
    let stale: Vec<String> = job
        .all_credential_paths()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| facts.files.contains_key(p) && !desired.files.iter().any(|f| &f.path == p))
        .collect();
    if !stale.is_empty() {
        actions.push(Action::RemoveFiles { paths: stale });
    }

    Ok(HostPlan {
        job,
        desired: Some(desired),
        actions,
    })
}

/// Plan taking a job off a host: stop and disable, then remove units, config and
/// credentials. Run records, the repository cache, the executor and — above all — backup
/// data are left alone.
pub fn plan_removal(job: &JobId, facts: &HostFacts) -> HostPlan {
    let mut actions = sweep_debris(facts);
    let timer_path = layout::unit_path(&job.timer_unit());
    let service_path = layout::unit_path(&job.service_unit());
    let timer = facts.units.get(&job.timer_unit());
    let timer_live = timer.is_some_and(|t| t.enabled == "enabled" || t.active == "active");
    if timer_live {
        actions.push(Action::DisableTimer {
            unit: job.timer_unit(),
        });
    }
    let service_running = facts
        .units
        .get(&job.service_unit())
        .is_some_and(|s| matches!(s.active.as_str(), "active" | "activating" | "reloading"));
    if service_running {
        actions.push(Action::StopService {
            unit: job.service_unit(),
        });
    }

    let mut paths: Vec<String> = [timer_path.clone(), service_path.clone(), job.config_path()]
        .into_iter()
        .chain(job.all_credential_paths().into_iter().map(|(p, _)| p))
        .filter(|p| facts.files.contains_key(p))
        .collect();
    paths.sort();
    let units_removed = paths.contains(&timer_path) || paths.contains(&service_path);
    if !paths.is_empty() {
        actions.push(Action::RemoveFiles { paths });
    }
    if units_removed {
        actions.push(Action::DaemonReload);
        actions.push(Action::ResetFailed {
            units: vec![job.service_unit(), job.timer_unit()],
        });
    }
    HostPlan {
        job: job.clone(),
        desired: None,
        actions,
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
