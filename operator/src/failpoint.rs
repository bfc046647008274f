//! Named points inside a host session at which a test build of the operator kills itself
//! with SIGKILL, so the fault suite can prove that a crash at exactly that point converges
//! on restart (`tests/tests/operator_faults.rs`).
//!
//! Without the `failpoints` cargo feature, [`hit`] is an empty inline function: release
//! builds and the image (Dockerfile: `cargo build --release -p fleetsnap-operator`) carry
//! no trace of it. With the feature, the point named in [`ENV`] fires on its first hit.
//! The feature only builds the separate `fleetsnap-operator-failpoints` binary
//! (`required-features`), so even a feature-unified workspace build never replaces the
//! regular `fleetsnap-operator` with an armed one.

/// The environment variable naming the point to die at (one of [`Point::name`]).
pub const ENV: &str = "FLEETSNAP_FAILPOINT";

/// A point in a host session between two host-visible steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// The executor is uploaded to its versioned directory; the link still points at the
    /// previous version (or nowhere).
    AfterUpload,
    /// Immediately before `/usr/local/bin/fleetsnap` is switched to the new version.
    BeforeLinkSwitch,
    /// Units are installed in `/etc/systemd/system`, systemd has not reloaded them.
    BeforeDaemonReload,
    /// The host converged; the policy's status is about to be written.
    BeforeStatusWrite,
}

impl Point {
    pub const ALL: [Point; 4] = [
        Point::AfterUpload,
        Point::BeforeLinkSwitch,
        Point::BeforeDaemonReload,
        Point::BeforeStatusWrite,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Point::AfterUpload => "after-upload",
            Point::BeforeLinkSwitch => "before-link-switch",
            Point::BeforeDaemonReload => "before-daemon-reload",
            Point::BeforeStatusWrite => "before-status-write",
        }
    }
}

/// Whether this binary was built with failpoints (logged at startup by test builds).
pub const ARMED: bool = cfg!(feature = "failpoints");

/// Passes `point`; in a `failpoints` build whose [`ENV`] names it, the process dies here.
#[inline(always)]
pub fn hit(point: Point) {
    #[cfg(feature = "failpoints")]
    armed::hit(point);
    #[cfg(not(feature = "failpoints"))]
    let _ = point;
}

#[cfg(feature = "failpoints")]
mod armed {
    use super::{ENV, Point};

    /// The line an armed binary prints before dying; a binary without it has no failpoints
    /// (the fault suite checks the regular build for it).
    const MARKER: &str = "fleetsnap failpoint reached: ";

    pub fn hit(point: Point) {
        if std::env::var(ENV).is_ok_and(|v| v == point.name()) {
            // Straight to stderr, unbuffered: the test reads it to prove where we died.
            eprintln!("{MARKER}{}: SIGKILL", point.name());
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            // SIGKILL to ourselves is delivered before kill(2) returns; never go on.
            loop {
                std::thread::park();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct() {
        let names: std::collections::BTreeSet<_> = Point::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), Point::ALL.len());
    }

    #[test]
    fn an_unnamed_point_passes() {
        // The env never names this point in unit tests, armed or not.
        hit(Point::AfterUpload);
    }
}
