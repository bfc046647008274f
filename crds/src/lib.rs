//! fleetsnap API types (group `fleetsnap.io`, version `v1alpha1`).
