//! cachefilesd-rs: a drop-in replacement for the Linux cachefilesd daemon.

pub mod proto;
pub mod config;
pub mod device;
pub mod cull;
pub mod daemon;
pub mod fake;
pub mod cli;
pub mod logging;
pub mod ondemand;
