//! Reading the job config the operator renders to `/etc/fleetsnap/<slug>.json`. The type and
//! its checks are `fleetsnap_contract::config`, shared with the operator.

use std::path::Path;

pub use fleetsnap_contract::config::*;

use super::RunError;

pub fn load(path: &Path) -> Result<JobConfig, RunError> {
    let bytes = std::fs::read(path).map_err(|e| RunError::Config {
        path: path.display().to_string(),
        msg: e.to_string(),
    })?;
    JobConfig::parse(&bytes).map_err(|msg| RunError::Config {
        path: path.display().to_string(),
        msg,
    })
}
