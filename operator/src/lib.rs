pub mod controller;
pub mod host;
pub mod leader;
pub mod limits;
pub mod metrics;
