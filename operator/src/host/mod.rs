//! The host layer: everything the operator does to a machine, without Kubernetes types.
//!
//! Pipeline per (policy, host): the controller dereferences resources into [`model`] data,
//! [`apply::gather_facts`] observes the host, [`plan`] decides purely what must change,
//! [`apply::apply_plan`] performs it through a [`shell::HostShell`] (in production the SSH
//! edge in [`ssh`]), and [`observe`] collects run records and timer state for status.

pub mod apply;
pub mod error;
pub mod facts;
pub mod layout;
pub mod model;
pub mod observe;
pub mod plan;
pub mod profile;
pub mod render;
pub mod shell;
pub mod ssh;

pub use error::HostError;
