//! The fleetsnap executor engine: restic-format repositories (v1 read, v2 read/write).

/// Version of this executor build, reported by `fleetsnap --version` and run records.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod backend;
pub mod backup;
pub mod check;
pub mod cli;
pub mod crypto;
pub mod failpoint;
pub mod forget;
pub mod format;
pub mod id;
pub mod limits;
pub mod lock;
pub mod password;
pub mod pattern;
pub mod prune;
pub mod repo;
pub mod restore;
pub mod run;
pub mod snapshot_times;
pub mod stats;
