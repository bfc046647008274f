//! The hostile-host suite: a compromised host holds its own per-host MinIO keys and the
//! repository password, and attacks with plain restic 0.19.1, `mc` and crafted repository
//! files. Each module is one attack from `docs/security.md`; each asserts that no history is
//! lost (or that the operator refuses and says why), against real MinIO, real hosts and the
//! real operator.
//!
//! Every module uses the one shared environment below: the binary starts it once.

use std::path::PathBuf;

use fleetsnap_tests::{Options, TestEnv, workspace_bin};

mod cross_host_restore;

/// The environment every attack runs in: MinIO, the API server, two systemd hosts.
pub fn env() -> &'static TestEnv {
    let env = TestEnv::shared(Options {
        hosts: 2,
        kube: true,
        s3: true,
        ..Default::default()
    });
    for tool in ["mc", "restic", "kubectl"] {
        let p = env.tool(tool);
        assert!(
            p.exists(),
            "{tool} is missing from the testenv at {}",
            p.display()
        );
    }
    env
}

/// Tests share the two hosts. Most only add objects in their own namespace and bucket and
/// run side by side (`shared`); one that swaps the executor on a host for a stand-in must
/// have the hosts to itself (`exclusive`), or another operator could switch the link back
/// between its install and its run.
static HOSTS: std::sync::RwLock<()> = std::sync::RwLock::new(());

pub fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    HOSTS.read().unwrap_or_else(|e| e.into_inner())
}

pub fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    HOSTS.write().unwrap_or_else(|e| e.into_inner())
}

/// The workspace's executor binary.
pub fn fleetsnap() -> PathBuf {
    workspace_bin("fleetsnap").unwrap()
}

mod forged_times;
mod overwrite;
