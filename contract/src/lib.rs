//! The operator ↔ executor contract: the two files that cross a host boundary.
//!
//! - the job config the operator renders to `/etc/fleetsnap/<kind>-<policy>.json` and the
//!   executor reads (`fleetsnap run --config`), with the systemd credential ids it names;
//! - the run record the executor writes to `/var/lib/fleetsnap/runs/<kind>-<policy>/` and
//!   the operator reads back.
//!
//! - the rotation rule of verification (`rotation`): which data subset a run reads.
//!
//! Both sides use these types, so a field cannot exist on one side only. `docs/host-layout.md`
//! documents the JSON; its examples are tests here.

pub mod config;
pub mod record;
pub mod rotation;

pub use config::{CONFIG_FORMAT, CredentialIds, JobConfig, JobKind, StdinSource};
pub use record::RunRecord;
