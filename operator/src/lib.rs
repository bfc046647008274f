pub mod controller;
pub mod failpoint;
pub mod host;
pub mod leader;
pub mod limits;
pub mod metrics;
pub mod onboard;
pub mod shard;
