//! The on-disk formats: every JSON document and binary layout of a restic repository.

pub mod config;
pub mod index;
pub mod mode;
pub mod pack;
pub mod quote;
pub mod snapshot;
pub mod time;
pub mod tree;
pub mod unpacked;
